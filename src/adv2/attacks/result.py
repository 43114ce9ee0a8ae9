"""What an attack is (:class:`Attack`, the one call shape), what it returns, how it is judged,
and the inputs every attack takes."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import torch

from adv2 import metrics
from adv2.attacks.lattice import quantise
from adv2.data import to_tensor, to_uint8
from adv2.interpreters import Interpreter
from adv2.models import device_of

#: images as attacks take them: float N×3×H×W in [0,1] (any device) or uint8 N×H×W×3
Images = torch.Tensor | np.ndarray


def as_batch(images: Images, device: torch.device) -> torch.Tensor:
    """Float N×3×H×W on ``device``, rounded to the uint8 lattice (the attacked image)."""
    if isinstance(images, np.ndarray):
        return to_tensor(images).to(device)
    return quantise(images.detach().to(device))


def home_of(images: Images) -> torch.device:
    """Where an attack's results go: the input's device (the CPU for numpy images)."""
    return images.device if isinstance(images, torch.Tensor) else torch.device("cpu")


@dataclass
class AttackResult:
    """Per-sample outcome of an attack on N images.

    ``adv``: uint8 N×H×W×3 adversarial images (numpy, on the host); ``x``: the same as float
    N×3×H×W in [0,1]. ``success``, ``confidence``: the success criterion (argmax = target, and
    any extra criterion such as "undetected") and p(target) on those uint8 images. ``linf``:
    ‖x* − x°‖∞ in uint8 units. ``passes``: forward + backward passes spent per image. ``maps``
    (N×1×h×w), ``l1`` (N,), ``iou`` (N×len(ks)): the true interpreter's maps of the uint8
    images for the target class and their distance to the target maps, filled by
    :func:`judge`; ``per_interpreter``: the same distances of each interpreter the maps hold
    (:func:`distances`; one for a single interpreter, each member of a joint one).
    ``queries`` (N,): the oracle queries each image cost, for black-box attacks
    (:mod:`adv2.blackbox`; None otherwise). Tensors are on the device of the attack's input.
    """

    adv: np.ndarray
    x: torch.Tensor
    success: torch.Tensor
    confidence: torch.Tensor
    pred: torch.Tensor
    linf: torch.Tensor
    passes: torch.Tensor
    maps: torch.Tensor | None = None
    l1: torch.Tensor | None = None
    iou: torch.Tensor | None = None
    queries: torch.Tensor | None = None
    per_interpreter: dict[str, MapDistance] | None = None

    def to(self, device: torch.device) -> AttackResult:
        """The same result with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        parts = self.per_interpreter
        moved["per_interpreter"] = None if parts is None else {
            n: d.to(device) for n, d in parts.items()}
        return AttackResult(**{k: v.to(device) if isinstance(v, torch.Tensor) else v
                               for k, v in moved.items()})


@dataclass
class MapDistance:
    """One interpreter's distance of maps to their target maps: ``l1`` (N,) and ``iou``
    (N×len(ks), the top-k% IoU per k)."""

    l1: torch.Tensor
    iou: torch.Tensor

    def to(self, device: torch.device) -> MapDistance:
        return MapDistance(self.l1.to(device), self.iou.to(device))


def distances(interpreter: Interpreter, maps: torch.Tensor, target_maps: torch.Tensor,
              size: tuple[int, int], ks: tuple[float, ...] = metrics.DEFAULT_KS
              ) -> tuple[MapDistance, dict[str, MapDistance]]:
    """The L1 and top-k% IoU of ``maps`` to ``target_maps``, measured on each interpreter they
    hold (:meth:`~adv2.interpreters.Interpreter.parts`) at its native resolution, and their
    means over those interpreters (one interpreter: its own).

    Shape:
        maps, target_maps: the interpreter's maps of inputs of ``size`` (H, W).

    Returns:
        (the means, each interpreter's by name).
    """
    own, goal = interpreter.parts(maps, size), interpreter.parts(target_maps, size)
    parts = {n: MapDistance(metrics.l1(m, goal[n]), metrics.iou(m, goal[n], ks))
             for n, m in own.items()}
    mean = MapDistance(torch.stack([d.l1 for d in parts.values()]).mean(0),
                       torch.stack([d.iou for d in parts.values()]).mean(0))
    return mean, parts


def judge(
    adv: Images,
    clean: Images,
    targets: torch.Tensor,
    model: torch.nn.Module,
    passes: torch.Tensor,
    interpreter: Interpreter | None = None,
    target_maps: torch.Tensor | None = None,
    ks: tuple[float, ...] = metrics.DEFAULT_KS,
    criterion=None,
) -> AttackResult:
    """Judge adversarial images as a reviewer would: the true model (and the true interpreter,
    for ``targets``) on the uint8 images; success is ``criterion`` (default: the target is
    predicted, :class:`~adv2.attacks.criteria.TargetPredicted`). Results on ``adv``'s device
    (the CPU for numpy images)."""
    from adv2.attacks.criteria import TargetPredicted

    device = device_of(model)
    x, x0 = as_batch(adv, device), as_batch(clean, device)
    targets = targets.to(device)
    linf = ((x - x0).abs().flatten(1).amax(dim=1) * 255).round().long()
    with torch.no_grad():
        if interpreter is not None:
            logits, maps = interpreter.explain(x, targets)
            maps = maps.detach()
        else:
            logits, maps = model(x), None
        rows = torch.arange(len(x), device=device)
        success = (criterion or TargetPredicted())(x, logits, targets, rows)
    result = AttackResult(
        adv=to_uint8(x),
        x=x,
        success=success.float(),
        confidence=metrics.confidence(logits, targets),
        pred=logits.argmax(dim=1),
        linf=linf,
        passes=passes.to(device),
        maps=maps,
    )
    if maps is not None and target_maps is not None:
        mean, result.per_interpreter = distances(interpreter, maps, target_maps.to(device),
                                                 tuple(x.shape[-2:]), ks)
        result.l1, result.iou = mean.l1, mean.iou
    return result.to(home_of(adv))


class Attack(Protocol):
    """What every attack is (PGD, ADV², adaptive ADV², any registered one): called on a batch,
    it returns its judged result; :meth:`config` describes it for the records.

    Shape:
        x: float N×3×H×W in [0,1] on any device, or uint8 N×H×W×3; targets: (N,) long;
        target_maps: N×1×h×w in [0,1] at the interpreter's resolution (None: the attack's
        default); support: N×1×H×W in [0,1], where the perturbation may live (None:
        everywhere; :mod:`adv2.attacks.support`).

    Returns:
        :class:`AttackResult` on the input's device.
    """

    def __call__(self, x: Images, targets: torch.Tensor, target_maps: torch.Tensor | None = None,
                 support: torch.Tensor | None = None) -> AttackResult:
        """Attack ``x`` toward ``targets``."""

    def config(self) -> dict:
        """The attack's settings, as recorded beside its results."""
