"""The classifier wrapper: raw RGB in [0,1] (float32, N×3×H×W) to logits, normalisation inside.

Every gradient in adv2 is taken with respect to raw pixels. A :class:`Classifier` is split into
``features`` (the last convolutional feature map, N×K×h×w) and ``head`` (global pooling + linear
layer), which is what CAM needs; architectures without that split still classify, and CAM
raises a clear error for them.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from adv2.models.devices import device_of
from adv2.models.errors import ModelError

Normalize = Callable[[torch.Tensor], torch.Tensor]


class MeanStd(nn.Module):
    """``x -> (x - mean) / std`` for N×3×H×W tensors in [0,1]; the constants are buffers
    (outside the state dict), so they move with the classifier."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        # made on the host like any module's parameters; they move with ``model.to(...)``
        for name, values in (("mean", mean), ("std", std)):
            self.register_buffer(name, torch.tensor(values, device="cpu").view(1, -1, 1, 1),
                                 persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def mean_std(mean: tuple[float, ...], std: tuple[float, ...]) -> MeanStd:
    """The normalisation ``(x - mean) / std`` (a :class:`MeanStd` module)."""
    return MeanStd(tuple(mean), tuple(std))


IMAGENET_NORMALIZE = mean_std((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # copied per model


def tf_normalize(x: torch.Tensor) -> torch.Tensor:
    """TF-style scaling of EfficientNet-Lite: (255·x − 127) / 128."""
    return (x * 255.0 - 127.0) / 128.0


class Classifier(nn.Module):
    """Wrap a network so that it maps raw [0,1] RGB to logits.

    Args:
        features: maps the normalised input to the last feature map (N×K×h×w), or, when ``head``
            is None, the whole network mapping the normalised input to logits.
        head: maps the feature map to logits; its last linear layer must be reachable through
            ``linear`` for CAM.
        linear: the final ``nn.Linear`` (K inputs), or None when the head has none.
        normalize: maps [0,1] input to the network's input domain.
        name: a label for reports.
    """

    def __init__(
        self,
        features: nn.Module,
        head: nn.Module | None = None,
        linear: nn.Linear | None = None,
        normalize: Normalize = IMAGENET_NORMALIZE,
        name: str = "custom",
    ) -> None:
        super().__init__()
        self.body = features
        self.head = head
        self.linear = linear
        # a module (with its constants) is the classifier's own, so it moves with it
        self.normalize = copy.deepcopy(normalize) if isinstance(normalize, nn.Module) \
            else normalize
        self.name = name
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        """Where the network is: attacks and interpreters compute there (``model.to(...)``)."""
        return device_of(self)

    @property
    def has_cam_head(self) -> bool:
        return self.head is not None and self.linear is not None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map (N×K×h×w) of raw input x (N×3×H×W in [0,1])."""
        self._require_split()
        return self.body(self.normalize(x))

    def _require_split(self) -> None:
        if self.head is None:
            raise ModelError(
                f"model {self.name!r} has no declared feature map + linear head; "
                "CAM needs a global-pool + linear classifier"
            )

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits N×C, last feature map N×K×h×w) from one forward pass."""
        self._require_split()
        feats = self.body(self.normalize(x))
        return self.head(feats), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return self.body(self.normalize(x))
        return self.head(self.body(self.normalize(x)))

    def cam_weights(self) -> torch.Tensor:
        """Linear classifier weights (C×K) used by CAM."""
        if not self.has_cam_head:
            raise ModelError(
                f"model {self.name!r} has no global-pool + linear head; CAM is undefined for it"
            )
        assert self.linear is not None
        return self.linear.weight


class PoolLinear(nn.Module):
    """Global average pooling followed by a linear layer (optionally after a pre-activation)."""

    def __init__(self, linear: nn.Linear, pre: nn.Module | None = None) -> None:
        super().__init__()
        self.pre = pre if pre is not None else nn.Identity()
        self.linear = linear

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pre(feats).mean(dim=(2, 3)))


class TimmFeatures(nn.Module):
    """A timm network's ``forward_features`` as a module (the last feature map)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.forward_features(x)
