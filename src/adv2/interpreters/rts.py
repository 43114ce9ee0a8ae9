"""RTS (Dabkowski & Gal 2017): a trained masking network explains the classifier in one pass."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from adv2.interpreters.base import Interpreter
from adv2.models import Classifier, ModelError
from adv2.rts import SaliencyNet, load

#: the default checkpoint shipped with adv2, by model name (docs/benchmarks/rts-quality.md
#: says how each was made)
SHIPPED = {"efficientnet_lite0": "rts_efficientnet_lite0.pt"}
#: every shipped checkpoint, which ``checkpoint`` may name without a folder: the default, and the
#: shared design (the classifier as the encoder, its head the selector) kept for comparison
SHIPPED_FILES = ("rts_efficientnet_lite0.pt", "rts_efficientnet_lite0_shared.pt")


def _resource(name: str) -> Path:
    return Path(str(resources.files("adv2.resources") / name))


def shipped_checkpoint(model_name: str) -> Path:
    """Path of the checkpoint shipped for ``model_name``; ModelError when there is none."""
    if model_name not in SHIPPED:
        raise ModelError(f"no RTS checkpoint ships for model {model_name!r}; train one with "
                         "'adv2 train-rts' and pass it as --rts-checkpoint")
    return _resource(SHIPPED[model_name])


def checkpoint_path(checkpoint: str | Path | None, model_name: str) -> Path:
    """The file ``checkpoint`` names: a path, the name of a shipped checkpoint, or (None) the
    default for the model."""
    if checkpoint is None or str(checkpoint) == "":
        return shipped_checkpoint(model_name)
    path = Path(checkpoint)
    if not path.exists() and str(checkpoint) in SHIPPED_FILES:
        return _resource(str(checkpoint))
    return path


class RTS(Interpreter):
    """The saliency network's mask for class c at 1/4 resolution (56×56 for 224²), in [0,1],
    high = the region that keeps the class. A forward pass of the classifier gives the logits;
    one of the saliency network's own encoder (EfficientNet-Lite1 for the shipped Lite0
    checkpoint) and its small decoder give the map, differentiably in x (in the shared design
    one pass of the classifier gives both).

    The map is sigmoid(z / ``temperature``) for the trained mask sigmoid(z): the same order of
    cells and the same region above 1/2, but the trained mask's logits reach ±100, so in float32
    about 40% of its cells are exactly 0 or 1, which makes top-k% sets (IoU) arbitrary and
    passes attacks no gradient. 5 keeps the cells distinct (docs/benchmarks/rts-quality.md
    measures the mask quality with it).

    Arguments:
        model: the explained classifier.
        checkpoint: a file from ``adv2 train-rts`` for this model and weights, or the name of a
            shipped checkpoint (default: the one shipped for the model).
        temperature: the map is sigmoid(z / temperature).
        encoder: the saliency network's encoder, when it is not the built-in model the
            checkpoint names (Python only; checked against the checkpoint's digest).

    Shape:
        x: float N×3×H×W in [0,1] on the model's device; classes: (N,) long.

    Returns:
        ``rts(x, classes)``: N×1×H/4×W/4 maps in [0,1]; ``rts.explain`` also the logits.

    Examples:
        >>> maps = RTS(model)(x, labels)  # doctest: +SKIP
    """

    name = "rts"
    # RTS maps are sigmoids with most cells near 0 or 1: the logit MSE keeps their order (IoU).
    # A joint step costs two passes (classifier and encoder): 20 + 2 × 90 ≤ 200 passes per image.
    # The step decays to 0.2 of lr over the joint stage; λ grows 1 → 32 (chosen on images the
    # benchmark does not report).
    attack_defaults = {"steps": 90, "warm_steps": 20, "optimizer": "adam", "lr": 2 / 255,
                       "lr_decay": 0.2, "lam": "1:32", "pred_loss": "ce", "map_loss": "logit",
                       "patience": 30, "step_search": False}
    # a support leaves fewer pixels to move: a warm start of up to 400 steps (it stops once the
    # target wins) and a 600-step joint stage without early stop
    support_attack_defaults = {"warm_steps": 400, "steps": 600, "patience": 0}
    # adaptive ADV² runs at λ × 0.5 (16 at the end): a larger λ leaves more images detected
    adaptive_lam_scale = 0.5

    def __init__(self, model: Classifier, checkpoint: str | Path | None = None,
                 temperature: float = 5.0, encoder: Classifier | None = None) -> None:
        super().__init__(model)
        self.temperature = temperature
        self.checkpoint = checkpoint_path(checkpoint, model.name)
        self.net: SaliencyNet = load(model, self.checkpoint, encoder)
        for p in self.net.parameters():
            p.requires_grad_(False)
        # one pass through the classifier and, with an encoder of its own, one through it
        self.passes_per_step = self.explain_passes = 1 if self.net.shared else 2
        self.fitted_on = frozenset(self.net.meta.get("trained_on", ()))

    def resolution(self, height: int, width: int) -> tuple[int, int]:
        with torch.no_grad():
            device = self.model.device
            _, z = self.net.mask_logits(torch.zeros(1, 3, height, width, device=device),
                                        torch.zeros(1, dtype=torch.long, device=device))
        return z.shape[-2], z.shape[-1]

    def explain(self, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, z = self.net.mask_logits(x, classes)
        return logits, torch.sigmoid(z / self.temperature)

    def config(self) -> dict:
        return {"name": self.name, "checkpoint": self.checkpoint.name,
                "temperature": self.temperature,
                "encoder": self.net.meta.get("encoder"),
                "trained": {k: self.net.meta.get(k) for k in ("command", "data", "seed")}}
