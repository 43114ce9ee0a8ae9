"""Attacks: one engine (:class:`Descent`) with pluggable losses, schedules, optimisers and
success criteria; PGD, ADV² and adaptive ADV² share one call shape,
``attack(x, targets, target_maps=None) -> AttackResult``."""

from adv2.attacks.adaptive import AdaptiveADV2
from adv2.attacks.adv2 import ADV2
from adv2.attacks.criteria import Both, Criterion, TargetPredicted
from adv2.attacks.engine import Descent, Judgement, Objective, Stop
from adv2.attacks.lattice import project, quantise
from adv2.attacks.losses import (MAP_LOSSES, PREDICTION_LOSSES, CrossEntropy, CWMargin,
                                 LabelSmoothing, MapL1, MapLogitMSE, MapMSE)
from adv2.attacks.optimizers import OPTIMIZERS, Adam, SignStep
from adv2.attacks.pgd import PGD
from adv2.attacks.result import AttackResult, judge
from adv2.attacks.schedules import Constant, Linear, Piecewise, Scaled, parse_schedule
from adv2.attacks.settings import AttackSettings
from adv2.attacks.step_search import MarginStepSearch

#: the attacks by the names the CLI and experiment files use
ATTACKS = {"pgd": PGD, "adv2": ADV2}
#: how reports name them
DISPLAY_NAMES = {"pgd": "PGD", "adv2": "ADV²"}

__all__ = ["ADV2", "ATTACKS", "DISPLAY_NAMES", "MAP_LOSSES", "OPTIMIZERS", "PGD",
           "PREDICTION_LOSSES", "Adam", "AdaptiveADV2", "AttackResult", "AttackSettings", "Both",
           "CWMargin", "Constant", "Criterion", "CrossEntropy", "Descent", "Judgement",
           "LabelSmoothing", "Linear", "MapL1", "MapLogitMSE", "MapMSE", "MarginStepSearch",
           "Objective", "Piecewise", "Scaled", "SignStep", "Stop", "TargetPredicted", "judge",
           "parse_schedule", "project", "quantise"]
