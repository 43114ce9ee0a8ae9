"""What an attack returns, and how it is judged."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from adv2 import metrics
from adv2.data import to_tensor
from adv2.interpreters import Interpreter


@dataclass
class AttackResult:
    """Per-sample outcome of an attack on N images.

    ``adv``: uint8 N×H×W×3 adversarial images. ``success``, ``confidence``: argmax = target and
    p(target) on those uint8 images. ``linf``: ‖x* − x°‖∞ in uint8 units. ``passes``: forward +
    backward passes spent per image. ``maps`` (N×1×h×w), ``l1`` (N,), ``iou`` (N×len(ks)): the
    true interpreter's maps of the uint8 images for the target class and their distance to the
    target maps, filled by :func:`judge`. ``history``: optional per-step records.
    """

    adv: np.ndarray
    success: torch.Tensor
    confidence: torch.Tensor
    pred: torch.Tensor
    linf: torch.Tensor
    passes: torch.Tensor
    maps: torch.Tensor | None = None
    l1: torch.Tensor | None = None
    iou: torch.Tensor | None = None
    history: list[dict] = field(default_factory=list)


def judge(
    adv: np.ndarray,
    clean: np.ndarray,
    targets: torch.Tensor,
    model: torch.nn.Module,
    passes: torch.Tensor,
    interpreter: Interpreter | None = None,
    target_maps: torch.Tensor | None = None,
    ks: tuple[float, ...] = metrics.DEFAULT_KS,
    history: list[dict] | None = None,
) -> AttackResult:
    """Judge uint8 adversarial images as a reviewer would: the true model (and the true
    interpreter, for ``targets``) on the quantised images."""
    x = to_tensor(adv)
    linf = torch.from_numpy(
        np.abs(adv.astype(np.int16) - clean.astype(np.int16)).reshape(len(adv), -1).max(axis=1)
    )
    with torch.no_grad():
        if interpreter is not None:
            logits, maps = interpreter.explain(x, targets)
            maps = maps.detach()
        else:
            logits, maps = model(x), None
    result = AttackResult(
        adv=adv,
        success=metrics.success(logits, targets),
        confidence=metrics.confidence(logits, targets),
        pred=logits.argmax(dim=1),
        linf=linf,
        passes=passes,
        maps=maps,
        history=history or [],
    )
    if maps is not None and target_maps is not None:
        result.l1 = metrics.l1(maps, target_maps)
        result.iou = metrics.iou(maps, target_maps, ks)
    return result
