"""Real-time saliency (RTS): the masking network, its loss, its training images, its training and
its checkpoints."""

from adv2.rts.holdout import HoldOut
from adv2.rts.loss import SaliencyLoss
from adv2.rts.network import DEFAULT_ENCODER, SaliencyNet
from adv2.rts.training import TrainConfig, TrainSettings, load, train

__all__ = ["DEFAULT_ENCODER", "HoldOut", "SaliencyLoss", "SaliencyNet", "TrainConfig",
           "TrainSettings", "load", "train"]
