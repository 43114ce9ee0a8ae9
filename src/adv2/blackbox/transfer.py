"""The transfer start of black-box attacks: a white-box attack on local surrogates (never the
attacked model) with momentum (Dong et al., CVPR 2018) and input diversity (Xie et al., CVPR
2019), the two changes that make a targeted perturbation carry over to another network."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field

import torch
import torch.nn.functional as F

from adv2.attacks.lattice import project, quantise
from adv2.attacks.losses import MapLoss, MapMSE
from adv2.attacks.result import AttackResult, Images, as_batch, home_of, judge
from adv2.attacks.settings import NOT_RECORDED, recorded
from adv2.attacks.support import lattice_bound
from adv2.interpreters import Interpreter
from adv2.models import Classifier, device_of


@dataclass
class TransferAttack:
    """Targeted momentum + input-diversity attack on an ensemble of surrogate models.

    Each of ``steps`` sign steps of ``lr`` descends the surrogates' summed cross-entropy of
    the target at a randomly resized and padded copy of the image (with probability
    ``diversity``; the copy is up to ``resize`` times larger), plus, with ``lam`` > 0 and
    ``interpreters``, ``lam`` times the mean of their map losses at the image itself; the
    gradient is normalised per image (mean |g| = 1) and accumulated with ``momentum``. The
    diversity draws come from ``seed`` (one draw per step for the whole batch, so an image's
    result does not depend on the others in its batch).

    Arguments:
        surrogates: local models (on one device). interpreters: one per surrogate (None: the
        prediction alone). eps: the L∞ budget. steps, lr, momentum, diversity, resize: as
        above. lam: the weight of the map term. seed: the diversity draws. map_loss: the map
        distance.

    Shape:
        x: float N×3×H×W in [0,1] or uint8 N×H×W×3; targets: (N,) long; target_maps: N×1×h×w
        at any resolution (resized to each interpreter's); support: N×1×H×W in [0,1].

    Returns:
        :class:`~adv2.attacks.result.AttackResult` on the input's device, judged by the first
        surrogate (and its interpreter, given target maps): the attacked system judges the
        images it is given.

    Examples:
        >>> start = TransferAttack([load_model("efficientnet_lite1"),
        ...                         load_model("efficientnet_lite2")])    # doctest: +SKIP
        >>> result = start(images, targets)                               # doctest: +SKIP
    """

    surrogates: Sequence[Classifier] = field(metadata=NOT_RECORDED)  # recorded by name
    interpreters: Sequence[Interpreter] | None = None
    _: KW_ONLY
    eps: float = 8 / 255
    steps: int = 100
    lr: float = 1 / 255
    momentum: float = 1.0
    diversity: float = 0.7
    resize: float = 1.1
    lam: float = 0.0
    seed: int = 0
    map_loss: MapLoss = field(default_factory=MapMSE)

    def __post_init__(self) -> None:
        if not self.surrogates:
            raise ValueError("a transfer attack needs at least one surrogate model")
        if self.interpreters is not None and len(self.interpreters) != len(self.surrogates):
            raise ValueError(f"{len(self.interpreters)} interpreters for "
                             f"{len(self.surrogates)} surrogates: give one per surrogate")

    def _diverse(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """x, or a copy resized to a random size and padded at a random place (one draw)."""
        if torch.rand((), generator=gen, device="cpu").item() >= self.diversity:
            return x
        h, w = x.shape[-2:]
        big = int(h * self.resize)
        size = int(torch.randint(h, max(big, h + 1), (), generator=gen, device="cpu"))
        pad = big - size
        top = int(torch.randint(0, pad + 1, (), generator=gen, device="cpu"))
        left = int(torch.randint(0, pad + 1, (), generator=gen, device="cpu"))
        resized = F.interpolate(x, size=(size, round(size * w / h)), mode="bilinear",
                                align_corners=False)
        return F.pad(resized, (left, big - resized.shape[-1] - left, top, pad - top))

    def _maps_at(self, target_maps: torch.Tensor, interpreter: Interpreter,
                 x: torch.Tensor) -> torch.Tensor:
        """The target maps at ``interpreter``'s resolution for images shaped like ``x``."""
        size = interpreter.resolution(*x.shape[2:])
        if tuple(target_maps.shape[-2:]) == tuple(size):
            return target_maps
        return F.interpolate(target_maps, size=size, mode="bilinear", align_corners=False)

    def __call__(self, x: Images, targets: torch.Tensor, target_maps: torch.Tensor | None = None,
                 support: torch.Tensor | None = None) -> AttackResult:
        """Attack ``x`` toward ``targets`` on the surrogates."""
        device = device_of(self.surrogates[0])
        x0 = as_batch(x, device)
        targets = targets.to(device)
        bound = torch.as_tensor(lattice_bound(self.eps, None if support is None
                                              else support.to(device)), device=device)
        judged = self.interpreters is not None and target_maps is not None
        goals = ([self._maps_at(target_maps.to(device), i, x0) for i in self.interpreters]
                 if judged else [])
        mapped = judged and self.lam > 0
        gen = torch.Generator().manual_seed(self.seed)
        rows = torch.arange(len(x0), device=device)
        velocity = torch.zeros_like(x0)
        adv = x0.clone()
        for step in range(self.steps):
            adv.requires_grad_(True)
            seen = self._diverse(adv, gen)
            loss = sum(F.cross_entropy(m(seen), targets, reduction="sum")
                       for m in self.surrogates)
            for interpreter, goal in zip(self.interpreters or (), goals if mapped else ()):
                _, distance = interpreter.attack_loss(adv, targets, goal, self.map_loss,
                                                      step / self.steps, rows)
                loss = loss + self.lam * distance.sum() / len(goals)
            grad, = torch.autograd.grad(loss, adv)
            scale = grad.abs().flatten(1).mean(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            velocity = self.momentum * velocity + grad / scale
            adv = project(adv.detach() - self.lr * velocity.sign(), x0, bound)
        passes_per_step = len(self.surrogates) * (1 + int(mapped))
        passes = torch.full((len(x0),), self.steps * passes_per_step, device=device)
        result = judge(quantise(adv), x0, targets, self.surrogates[0], passes,
                       self.interpreters[0] if judged else None, goals[0] if judged else None)
        return result.to(home_of(x))

    def config(self) -> dict:
        """The attack's settings, as recorded beside its results."""
        return {"attack": "transfer", "surrogates": [m.name for m in self.surrogates],
                **recorded(self)}
