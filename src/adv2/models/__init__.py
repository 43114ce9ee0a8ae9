"""Classifiers that take raw RGB in [0,1] (float32, N×3×H×W) and return logits: the wrapper
(:mod:`adv2.models.classifier`), weight files (:mod:`adv2.models.weights`, foreign key names in
:mod:`adv2.models.keys`), the builders by name (:mod:`adv2.models.builders`) and devices
(:mod:`adv2.models.devices`).

Normalisation lives inside the wrapper, so every gradient in adv2 is taken with respect to raw
pixels. A :class:`Classifier` is split into ``features`` (the last convolutional feature map,
N×K×h×w) and ``head`` (global pooling + linear layer), which is what CAM needs; architectures
without that split still classify, and CAM raises a clear error for them.
"""

from adv2.models.builders import efficientnet_lite, load_model
from adv2.models.classifier import (IMAGENET_NORMALIZE, Classifier, MeanStd, Normalize,
                                    PoolLinear, TimmFeatures, mean_std, tf_normalize)
from adv2.models.devices import check_device, describe_device, device_of
from adv2.models.errors import ModelError
from adv2.models.weights import load_state_dict, load_weights, model_digest

__all__ = ["IMAGENET_NORMALIZE", "Classifier", "MeanStd", "ModelError", "Normalize",
           "PoolLinear", "TimmFeatures", "check_device", "describe_device", "device_of",
           "efficientnet_lite", "load_model", "load_state_dict", "load_weights", "mean_std",
           "model_digest", "tf_normalize"]
