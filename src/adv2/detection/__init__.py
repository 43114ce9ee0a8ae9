"""Feature-squeezing detection and the adaptive ADV² attacks that evade it."""

from adv2.detection.detector import (Detection, FeatureSqueezingDetector, NotFittedError,
                                     cross_validated_flags, softmax_l1, threshold_at_fpr)
from adv2.detection.squeezers import (SQUEEZER_NAMES, BitDepth, MedianSmoothing, NonLocalMeans,
                                      Squeezer, build_squeezer, nlm_uint8)

__all__ = ["SQUEEZER_NAMES", "BitDepth", "Detection", "FeatureSqueezingDetector",
           "MedianSmoothing", "NonLocalMeans", "NotFittedError", "Squeezer", "build_squeezer",
           "cross_validated_flags", "nlm_uint8", "softmax_l1", "threshold_at_fpr"]
