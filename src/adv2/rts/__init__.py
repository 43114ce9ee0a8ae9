"""Real-time saliency (RTS): the masking network, its training and its checkpoints."""

from adv2.rts.network import DEFAULT_ENCODER, SaliencyNet
from adv2.rts.training import SaliencyLoss, TrainConfig, load, train

__all__ = ["DEFAULT_ENCODER", "SaliencyLoss", "SaliencyNet", "TrainConfig", "load", "train"]
