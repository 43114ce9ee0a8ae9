"""Attacks: one engine (:class:`Descent`) with pluggable losses, schedules, optimisers and
success criteria; PGD, ADV² and adaptive ADV² share one call shape (:class:`Attack`),
``attack(x, targets, target_maps=None) -> AttackResult``, and the registered ones
(:data:`ATTACKS`, entered in :mod:`adv2.attacks.registry`) build from
:class:`AttackSettings`."""

from adv2.attacks.adaptive import AdaptiveADV2
from adv2.attacks.adv2 import ADV2
from adv2.attacks.criteria import Both, Criterion, TargetPredicted
from adv2.attacks.engine import Descent, Objective
from adv2.attacks.iterates import Judgement, Stop
from adv2.attacks.lattice import project, quantise
from adv2.attacks.losses import (MAP_LOSSES, PREDICTION_LOSSES, CrossEntropy, CWMargin,
                                 LabelSmoothing, MapL1, MapLogitMSE, MapMSE)
from adv2.attacks.optimizers import OPTIMIZERS, Adam, SignStep
from adv2.attacks.pgd import PGD
from adv2.attacks.registry import ATTACKS
from adv2.attacks.result import Attack, AttackResult, judge
from adv2.attacks.schedules import Constant, Linear, Piecewise, Scaled, parse_schedule
from adv2.attacks.settings import DISPLAY_NAMES, AttackEntry, AttackSettings, SettingError
from adv2.attacks.step_search import MarginStepSearch

__all__ = ["ADV2", "ATTACKS", "DISPLAY_NAMES", "MAP_LOSSES", "OPTIMIZERS", "PGD",
           "PREDICTION_LOSSES", "Adam", "AdaptiveADV2", "Attack", "AttackEntry", "AttackResult",
           "AttackSettings", "Both", "CWMargin", "Constant", "Criterion", "CrossEntropy",
           "Descent", "Judgement", "LabelSmoothing", "Linear", "MapL1", "MapLogitMSE", "MapMSE",
           "MarginStepSearch", "Objective", "Piecewise", "Scaled", "SettingError", "SignStep",
           "Stop", "TargetPredicted", "judge", "parse_schedule", "project", "quantise"]
