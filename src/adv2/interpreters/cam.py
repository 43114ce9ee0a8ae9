"""CAM (Zhou et al. 2016): Σ_k w_{c,k} A_k on the last feature map, min-max normalised."""

from __future__ import annotations

import torch

from adv2.interpreters.base import Interpreter, minmax
from adv2.models import Classifier


class CAM(Interpreter):
    """Class activation map at the feature map's resolution (7×7 for a 224² input at stride 32).

    No ReLU and no upsampling, as in the ADV² paper; normalised per image with an ε.

    Arguments:
        model: a :class:`~adv2.models.Classifier` with a feature map and a pool + linear head.
        eps: the ε of the min-max normalisation.

    Shape:
        x: float N×3×H×W in [0,1] on the model's device; classes: (N,) long.

    Returns:
        ``cam(x, classes)``: N×1×h×w maps in [0,1]; ``cam.explain`` also the logits.

    Examples:
        >>> maps = CAM(model)(x, labels)  # doctest: +SKIP
    """

    name = "cam"
    # ADV²: the interface's defaults. Adaptive ADV² needs λ × 16 to keep the map while it
    # evades the detector.
    adaptive_lam_scale = 16.0
    # a support leaves fewer pixels to move: a longer warm start (small supports need it to
    # reach the target), more steps without early stop, a larger λ and a per-image λ search
    support_attack_defaults = {"steps": 400, "warm_steps": 150, "patience": 0, "lam": "20:40",
                               "lam_search": 4}
    # black-box ADV²: a first square of 2% of the image (docs/benchmarks/blackbox.md)
    blackbox_attack_defaults = {**Interpreter.blackbox_attack_defaults, "p_init": 0.02}

    def __init__(self, model: Classifier, eps: float = 1e-8) -> None:
        super().__init__(model)
        self.weights = model.cam_weights()  # raises for models without a pool + linear head
        self.eps = eps

    def resolution(self, height: int, width: int) -> tuple[int, int]:
        with torch.no_grad():
            feats = self.model.features(torch.zeros(1, 3, height, width,
                                                    device=self.model.device))
        return feats.shape[-2], feats.shape[-1]

    def explain(self, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = self.model.forward_with_features(x)
        return logits, self.maps_of(feats, classes)

    def explain_predicted(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the CAM of each image's predicted class, from one forward pass."""
        logits, feats = self.model.forward_with_features(x)
        return logits, self.maps_of(feats, logits.argmax(dim=1))

    def maps_of(self, feats: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The min-max normalised CAMs (N×1×h×w) of ``classes`` from feature maps N×K×h×w."""
        w = self.weights[classes].to(feats)  # N×K
        return minmax(torch.einsum("nk,nkhw->nhw", w, feats).unsqueeze(1), self.eps)
