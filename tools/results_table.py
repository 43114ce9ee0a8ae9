"""The README's results table, read from the benchmark pages that their commands write
(:mod:`adv2.benchmarking.pages`).

    python tools/results_table.py           # rewrite the table in README.md
    python tools/results_table.py --check   # exit 1 when README.md disagrees with the pages
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adv2.benchmarking.pages import results_table, with_table

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare; exit 1 when README.md disagrees with the pages")
    args = parser.parse_args(argv)
    path = ROOT / "README.md"
    readme = path.read_text()
    fresh = with_table(readme, results_table(ROOT))
    if args.check:
        if fresh != readme:
            print("README.md's results table disagrees with docs/benchmarks/: run "
                  "python tools/results_table.py", file=sys.stderr)
            return 1
        print("README.md's results table matches docs/benchmarks/")
        return 0
    path.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
