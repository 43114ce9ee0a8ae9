"""Detectors of adversarial inputs (one protocol, :class:`Detector`; the registered ones in
:data:`DETECTORS`: feature squeezing and the ensemble of interpreters) and the hooks adaptive
attacks evade them with (:class:`Guard`)."""

from adv2.detection.consistency import inconsistency, pooled, soft_inconsistency
from adv2.detection.detector import Detector, NotFittedError
from adv2.detection.ensemble import EnsembleDetector, EnsembleGuard
from adv2.detection.guard import Guard
from adv2.detection.registry import DETECTORS, build_detector, detector_class, load_detector
from adv2.detection.roc import auroc, wilson_interval
from adv2.detection.scored import write_scores
from adv2.detection.squeezers import (SQUEEZER_NAMES, BitDepth, MedianSmoothing, NonLocalMeans,
                                      Squeezer, build_squeezer, nlm_uint8)
from adv2.detection.squeezing import FeatureSqueezingDetector, SqueezeGuard, softmax_l1
from adv2.detection.thresholds import (Detection, ThresholdFit, Thresholds, cross_validated_flags,
                                       fit_thresholds, held_out_folds, threshold_at_fpr,
                                       with_joint)

__all__ = ["DETECTORS", "SQUEEZER_NAMES", "BitDepth", "Detection", "Detector", "EnsembleDetector",
           "EnsembleGuard", "FeatureSqueezingDetector", "Guard", "MedianSmoothing",
           "NonLocalMeans", "NotFittedError", "SqueezeGuard", "Squeezer", "ThresholdFit",
           "Thresholds", "auroc", "build_detector", "build_squeezer", "cross_validated_flags",
           "detector_class", "fit_thresholds", "held_out_folds", "inconsistency", "load_detector",
           "nlm_uint8", "pooled", "soft_inconsistency", "softmax_l1", "threshold_at_fpr",
           "wilson_interval", "with_joint", "write_scores"]
