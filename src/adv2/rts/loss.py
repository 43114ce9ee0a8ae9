"""The original saliency loss (Dabkowski & Gal 2017).

For an image x (N×3×H×W in [0,1]) and a mask m (upsampled to H×W), the *preserved* image keeps
the masked region, ``m·x + (1−m)·r``, and the *destroyed* image removes it, ``(1−m)·x + m·r``,
where r is, per image with probability 1/2, x blurred (Gaussian σ = 11) or a random
colour plus Gaussian noise. The loss, with the original weights, is

    destroyer CW margin (non-targeted, confidence 5) on the destroyed image
    + 0.3 · preserver CW margin (targeted, confidence 1) on the preserved image
    + 8 · mean((m + 5e-4)^0.3)                      (area)
    + 0.005 · TV²(m) with a border penalty of 0.3   (smoothness, on the 1/4-resolution mask)

For "fake" labels (a random other class, probability 0.3) only the area and smoothness terms
apply, which teaches the decoder to return an empty mask for a class absent from the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adv2.filters import blur
from adv2.metrics import margin
from adv2.models import Classifier


@dataclass
class SaliencyLoss:
    """The original saliency loss weights (see the module docstring)."""

    area_weight: float = 8.0
    area_power: float = 0.3
    smooth_weight: float = 0.005
    border_penalty: float = 0.3
    preserver_weight: float = 0.3
    destroyer_confidence: float = 5.0
    preserver_confidence: float = 1.0
    blur_sigma: float = 11.0
    noise_std: float = 0.055  # the original's N(0, 0.11) on [−1,1] images
    colour_range: float = 0.33  # the original's U(−0.66, 0.66) on [−1,1] images
    preserved_noise_std: float = 0.015  # the original's N(0, 0.03) on [−1,1] images

    def replacement(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Per image: x blurred, or a random colour plus noise (probability 1/2 each)."""
        n = x.shape[0]
        blurred = blur(x, self.blur_sigma)
        draw = {"generator": gen, "device": gen.device}
        colour = 0.5 + self.colour_range * (2 * torch.rand(n, 3, 1, 1, **draw) - 1)
        noisy = colour + self.noise_std * torch.randn(x.shape, **draw)
        use_blur = (torch.rand(n, 1, 1, 1, **draw) < 0.5).to(x)
        return (use_blur * blurred + (1 - use_blur) * noisy).clamp(0, 1)

    def smoothness(self, m: torch.Tensor) -> torch.Tensor:
        """(N,) squared total variation plus the border penalty, summed over cells, halved."""
        tv = ((m[:, :, 1:] - m[:, :, :-1]) ** 2).sum(dim=(1, 2, 3))
        tv = tv + ((m[..., 1:] - m[..., :-1]) ** 2).sum(dim=(1, 2, 3))
        border = (m[:, :, 0] ** 2 + m[:, :, -1] ** 2).sum(dim=(1, 2))
        border = border + (m[..., 0] ** 2 + m[..., -1] ** 2).sum(dim=(1, 2))
        return (tv + self.border_penalty * border) / 2

    def __call__(self, model: Classifier, x: torch.Tensor, masks: torch.Tensor,
                 classes: torch.Tensor, real: torch.Tensor, gen: torch.Generator,
                 area_scale: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss over the batch and its parts. masks N×1×h×w in [0,1]; real (N,) bool;
        ``area_scale`` multiplies the area weight (warm-up)."""
        up = F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=False)
        other = self.replacement(x, gen)
        preserved = up * x + (1 - up) * other
        preserved = preserved + self.preserved_noise_std * torch.randn(
            x.shape, generator=gen, device=gen.device)
        destroyed = (1 - up) * x + up * other
        logits = model(torch.cat([preserved.clamp(0, 1), destroyed]))
        keep, remove = logits.chunk(2)
        destroyer = margin(remove, classes).clamp(min=-self.destroyer_confidence)
        preserver = (-margin(keep, classes)).clamp(min=-self.preserver_confidence)
        area = ((up + 5e-4) ** self.area_power).mean(dim=(1, 2, 3))
        smooth = self.smoothness(masks)
        realf = real.to(x)
        terms = {
            "destroyer": (realf * destroyer).mean(),
            "preserver": self.preserver_weight * (realf * preserver).mean(),
            "area": area_scale * self.area_weight * area.mean(),
            "smoothness": self.smooth_weight * smooth.mean(),
        }
        return sum(terms.values()), {k: float(v.detach()) for k, v in terms.items()}
