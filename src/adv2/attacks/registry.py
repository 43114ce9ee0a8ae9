"""The built-in attacks, entered into :data:`adv2.attacks.settings.ATTACKS` by name.

Adding an attack is its own module (a class with the call shape of
:class:`~adv2.attacks.result.Attack`, its settings' defaults and a build from resolved
:class:`~adv2.attacks.settings.AttackSettings`) and one line here.
"""

from adv2.attacks.adv2 import ADV2
from adv2.attacks.pgd import PGD
from adv2.attacks.settings import ATTACKS, AttackEntry
from adv2.blackbox import build
from adv2.blackbox.search import RandomSearch

ATTACKS.update(
    pgd=AttackEntry(PGD, "PGD", PGD.settings_defaults, PGD.from_settings,
                    AttackEntry(RandomSearch, "random search", build.baseline_defaults,
                                build.build_baseline)),
    adv2=AttackEntry(ADV2, "ADV²", ADV2.settings_defaults, ADV2.from_settings,
                     AttackEntry(RandomSearch, "black-box ADV²", build.adv2_defaults,
                                 build.build_adv2)),
)
