"""Real-time saliency (RTS): the masking network, its training and its checkpoints."""

from adv2.rts.network import SaliencyNet
from adv2.rts.training import SaliencyLoss, TrainConfig, load, train

__all__ = ["SaliencyLoss", "SaliencyNet", "TrainConfig", "load", "train"]
