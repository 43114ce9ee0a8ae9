"""The built-in attacks, entered into :data:`adv2.attacks.settings.ATTACKS` by name.

Adding an attack is its own module (a class with the call shape of
:class:`~adv2.attacks.result.Attack`, its settings' defaults and a build from resolved
:class:`~adv2.attacks.settings.AttackSettings`) and one line here. An attack's other forms are
entries of its own: under the black-box threat, and adaptive (ADV² wrapped by
:class:`~adv2.attacks.adaptive.AdaptiveADV2` to evade fitted detectors).
"""

from adv2.attacks.adaptive import AdaptiveADV2
from adv2.attacks.adv2 import ADV2
from adv2.attacks.pgd import PGD
from adv2.attacks.settings import ATTACKS, AttackEntry
from adv2.blackbox import build
from adv2.blackbox.search import RandomSearch

ATTACKS.update(
    pgd=AttackEntry(PGD, "PGD", PGD.settings_defaults, PGD.from_settings,
                    black_box=AttackEntry(RandomSearch, "random search", build.baseline_defaults,
                                          build.build_baseline)),
    adv2=AttackEntry(ADV2, "ADV²", ADV2.settings_defaults, ADV2.from_settings, differentiates=True,
                     black_box=AttackEntry(RandomSearch, "black-box ADV²", build.adv2_defaults,
                                           build.build_adv2),
                     adaptive=AttackEntry(AdaptiveADV2, "adaptive ADV²",
                                          AdaptiveADV2.settings_defaults,
                                          AdaptiveADV2.from_settings, differentiates=True)),
)
