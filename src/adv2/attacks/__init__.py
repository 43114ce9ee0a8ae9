"""Attacks: one engine (:func:`descend`) with pluggable losses, schedules and optimisers."""

from adv2.attacks.adv2 import ADV2
from adv2.attacks.engine import Objective, Stop, descend
from adv2.attacks.lattice import project, quantise
from adv2.attacks.losses import (MAP_LOSSES, PREDICTION_LOSSES, CrossEntropy, CWMargin,
                                 LabelSmoothing, MapL1, MapLogitMSE, MapMSE)
from adv2.attacks.optimizers import OPTIMIZERS, Adam, SignStep
from adv2.attacks.pgd import PGD
from adv2.attacks.result import AttackResult, judge
from adv2.attacks.schedules import Constant, Linear, Piecewise, parse_schedule
from adv2.attacks.step_search import MarginStepSearch

__all__ = ["ADV2", "MAP_LOSSES", "OPTIMIZERS", "PGD", "PREDICTION_LOSSES", "Adam",
           "AttackResult", "CWMargin", "Constant", "CrossEntropy", "LabelSmoothing", "Linear",
           "MapL1", "MapLogitMSE", "MapMSE", "MarginStepSearch", "Objective", "Piecewise",
           "SignStep", "Stop", "descend", "judge", "parse_schedule", "project", "quantise"]
