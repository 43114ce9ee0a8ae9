import sys

from adv2.cli import main

sys.exit(main())
