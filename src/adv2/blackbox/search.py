"""Score-based random search in the L∞ ball (Square Attack, Andriushchenko et al. ECCV 2020),
on the prediction alone or on ADV²'s joint loss, from the oracle's answers only."""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, field

import torch

from adv2 import metrics
from adv2.attacks.draws import ImageSeeds
from adv2.attacks.lattice import project, quantise
from adv2.attacks.losses import MapLoss, MapMSE
from adv2.attacks.result import Attack, AttackResult, Images, as_batch, home_of
from adv2.attacks.settings import NOT_RECORDED, recorded
from adv2.attacks.support import lattice_bound
from adv2.blackbox.oracle import Answer, Oracle
from adv2.errors import SettingError

#: Square Attack's schedule of the square's area: at these fractions of a 10,000-query budget
#: the fraction ``p`` of the image a square covers halves
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


#: where a square goes: anywhere (Square Attack's rule), or, for black-box ADV² once the
#: target is predicted, centred on a pixel drawn in proportion to the oracle map's error there
PLACEMENTS = ("uniform", "map")


def improves(new_loss: torch.Tensor, new_success: torch.Tensor, loss: torch.Tensor,
             success: torch.Tensor) -> torch.Tensor:
    """Whether each proposal beats its image's iterate: predicting the target beats missing
    it; between two that both hit or both miss, the lower loss wins (the joint loss while both
    hit, the margin while both miss), compared exactly, however small the step.

    Examples:
        >>> better = improves(new_loss, new_success, loss, success)  # doctest: +SKIP
        >>> x[better] = proposal[better]  # doctest: +SKIP
    """
    return (new_success & ~success) | ((new_success == success) & (new_loss < loss))


def square_fraction(p_init: float, query: int, budget: int) -> float:
    """The fraction of the image the square of query ``query`` covers (Square Attack's
    schedule, rescaled from 10,000 queries to ``budget``)."""
    scaled = int(query / max(budget, 1) * 10_000)
    return p_init / 2 ** sum(scaled > h for h in _HALVINGS)


@dataclass
class RandomSearch(ImageSeeds):
    """Targeted Square-Attack-style random search on the answers of an :class:`Oracle`.

    Each query proposes, per image, the current perturbation with one random square window
    set to ±ε (one sign per channel) and keeps it when it lowers the loss. Until an image
    predicts its target the loss is the margin ``m = max_{j≠t} s_j − s_t`` of the oracle's
    log-probabilities (or logits) ``s``; from then on, with ``lam`` > 0 (black-box ADV²), it is
    ``max(m, −kappa) + lam · map_loss(oracle map, target map)`` among the iterates that keep
    predicting the target. With ``lam`` 0 this is the prediction-only baseline and an image
    stops at success; black-box ADV² stops an image once it succeeds with an IoU of its oracle
    map to the target map of at least ``stop_iou``, after ``patience`` queries without
    improvement, or at its budget.

    Arguments:
        oracle: the attacked system (all the search sees; :meth:`Oracle.verdict` judges the
        result). eps: the L∞ budget. queries: the queries per image, the clean image's answer
        and the start's included. lam: the weight of the map term. p_init: the first square's
        fraction of the image. kappa: how far beyond the decision boundary the margin still
        counts. stop_iou, patience: stopping (None: off). seed: the search's draws, each
        image's from its own seed (:meth:`use_seeds`; ``seed`` for every image unless set),
        on the host, so every device agrees. map_loss: the map
        distance. start: an attack on local surrogates, never the attacked model
        (:class:`~adv2.blackbox.transfer.TransferAttack`), whose images start the search
        (None: Square's vertical stripes); with ``queries`` 0 its images are the result
        (transfer alone). placement: :data:`PLACEMENTS`.

    Shape:
        x: float N×3×H×W in [0,1], or uint8 N×H×W×3; targets: (N,) long; target_maps:
        N×1×h×w at the oracle interpreter's resolution (None: the oracle's map of the clean
        image, one query); support: N×1×H×W in [0,1], where the perturbation may live.

    Returns:
        :class:`~adv2.attacks.result.AttackResult` on the input's device, judged by the true
        model and interpreter; ``queries`` and ``passes`` are the queries per image.

    Examples:
        >>> oracle = Oracle(model, CAM(model), "scores+map")         # doctest: +SKIP
        >>> result = RandomSearch(oracle, lam=100)(images, targets)   # doctest: +SKIP
    """

    oracle: Oracle = field(metadata=NOT_RECORDED)  # recorded by what it answers
    _: KW_ONLY
    eps: float = 8 / 255
    queries: int = 10_000
    lam: float = 0.0
    p_init: float = 0.05
    kappa: float = 0.0
    stop_iou: float | None = None
    patience: int | None = None
    seed: int = 0
    map_loss: MapLoss = field(default_factory=MapMSE)
    start: Attack | None = None
    placement: str = "uniform"

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise SettingError("placement", f"one of {', '.join(PLACEMENTS)}, got "
                                            f"{self.placement!r}")
        if self.oracle.prediction == "label":
            raise SettingError("answers", f"{self.oracle.answers!r}: the random search needs "
                                          "the scores (scores or logits, with +map for "
                                          "black-box ADV²)")
        if self.lam > 0 and not self.oracle.maps:
            raise SettingError("answers", f"{self.oracle.answers!r}: black-box ADV² (lam > 0) "
                                          "needs the maps (scores+map or logits+map)")
        if self.placement == "map" and not self.oracle.maps:
            raise SettingError("placement", f"map places squares by the oracle's maps, which "
                                            f"answers {self.oracle.answers!r} lacks")
        if self.queries < 0:
            raise SettingError("queries", f"must be ≥ 0, got {self.queries}")

    def __call__(self, x: Images, targets: torch.Tensor, target_maps: torch.Tensor | None = None,
                 support: torch.Tensor | None = None) -> AttackResult:
        """Attack ``x`` toward ``targets`` within the query budget."""
        device = self.oracle.device
        x0 = as_batch(x, device)
        targets = targets.to(device)
        support = None if support is None else support.to(device)
        bound = torch.as_tensor(lattice_bound(self.eps, support), device=device)
        bound = bound.expand(len(x0), 1, *x0.shape[2:]) if bound.ndim else \
            torch.full((len(x0), 1, *x0.shape[2:]), float(bound), device=device)
        self.oracle.open(len(x0))
        if target_maps is None and self.lam > 0 and self.queries > 0:
            target_maps = self.oracle.query(x0).maps  # the clean maps: one counted query
        target_maps = None if target_maps is None else target_maps.to(device)
        start = self._start(x0, targets, target_maps, support, bound)
        if self.queries > 0:
            start = self._search(x0, start, targets, target_maps, bound)
        judged = self.oracle.verdict(start, x0, targets, target_maps)
        return judged.to(home_of(x))

    def _start(self, x0: torch.Tensor, targets: torch.Tensor,
               target_maps: torch.Tensor | None, support: torch.Tensor | None,
               bound: torch.Tensor) -> torch.Tensor:
        """The first iterate: the start attack's images (given the target maps at the oracle's
        resolution), or Square's vertical stripes."""
        if self.start is None:
            stripes = (x0.shape[1], 1, x0.shape[3])  # drawn on the host, as the generators
            signs = torch.stack([torch.randint(0, 2, stripes, device="cpu", generator=gen)
                                 for gen in self.generators(len(x0))]).to(x0) * 2 - 1
            return (x0 + signs * bound).clamp(0, 1)
        result = self.start(x0, targets, target_maps, support)
        return project(quantise(result.x.to(x0)), x0, bound)

    def _corners(self, rows: torch.Tensor, side: int, shape: tuple[int, int],
                 error: torch.Tensor | None, success: torch.Tensor,
                 gens: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-left corners (each len(rows)×1×1×1, on the host) of this query's squares:
        uniform, or (``placement="map"``, images that predict their target) centred on a
        pixel drawn with probability proportional to |oracle map − target map| there."""
        h, w = shape
        mine = [gens[r] for r in rows.tolist()]  # each image's own generator
        top = torch.cat([torch.randint(0, h - side + 1, (1,), generator=g, device="cpu")
                         for g in mine]).view(-1, 1, 1, 1)
        left = torch.cat([torch.randint(0, w - side + 1, (1,), generator=g, device="cpu")
                          for g in mine]).view(-1, 1, 1, 1)
        if self.placement == "uniform" or error is None:
            return top, left
        cells = error[rows].flatten(1).cpu().double() + 1e-6  # every cell stays reachable
        drawn = torch.cat([torch.multinomial(c, 1, generator=g) for c, g in zip(cells, mine)])
        mh, mw = error.shape[-2:]
        jitter = torch.stack([torch.rand(2, generator=g, dtype=torch.double, device="cpu")
                              for g in mine], dim=1)
        cy, cx = (drawn // mw).double() + jitter[0], (drawn % mw).double() + jitter[1]
        guided_top = (cy * h / mh - side / 2).round().long().clamp(0, h - side)
        guided_left = (cx * w / mw - side / 2).round().long().clamp(0, w - side)
        guided = success[rows].cpu()
        return (torch.where(guided, guided_top, top.flatten()).view(-1, 1, 1, 1),
                torch.where(guided, guided_left, left.flatten()).view(-1, 1, 1, 1))

    def _loss(self, answer: Answer, targets: torch.Tensor,
              target_maps: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor,
                                                        torch.Tensor]:
        """Per image: the loss, whether the target is predicted, and the oracle map's IoU."""
        scores = (answer.probs.clamp_min(1e-30).log() if answer.probs is not None
                  else answer.logits)
        margin = -metrics.margin(scores, targets)  # below 0 once the target wins
        success = answer.labels == targets
        iou = torch.zeros_like(margin)
        if self.lam == 0:
            return margin, success, iou
        iou = metrics.iou(answer.maps, target_maps).mean(dim=1)
        joint = margin.clamp_min(-self.kappa) + self.lam * self.map_loss(answer.maps,
                                                                         target_maps)
        # an image that misses its target is ranked by its margin, one that predicts it by
        # the joint loss, and the second before the first (:func:`improves`)
        return torch.where(success, joint, margin), success, iou

    def _done(self, success: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
        """Which images have met the stopping goal."""
        if self.lam == 0:
            return success
        if self.stop_iou is None:
            return torch.zeros_like(success)
        return success & (iou >= self.stop_iou)

    def _search(self, x0: torch.Tensor, x: torch.Tensor, targets: torch.Tensor,
                target_maps: torch.Tensor | None, bound: torch.Tensor) -> torch.Tensor:
        """Random-search updates from ``x`` until each image stops; the final iterates."""
        n, c, h, w = x0.shape
        gens = self.generators(n, stream=1)
        budget = torch.minimum(self.oracle.left(),
                               torch.full_like(self.oracle.left(), self.queries)
                               - self.oracle.counts).to(x0.device)
        if (budget <= 0).any():
            return x
        answer = self.oracle.query(x)
        loss, success, iou = self._loss(answer, targets, target_maps)
        error = None if target_maps is None or self.placement == "uniform" \
            else (answer.maps - target_maps).abs()
        stale = torch.zeros(n, dtype=torch.long, device=x0.device)
        spent = torch.ones(n, dtype=torch.long, device=x0.device)
        area = h * w
        i = 0
        while True:
            active = ~self._done(success, iou) & (spent < budget)
            if self.patience is not None:
                active &= stale < self.patience
            rows = active.nonzero().flatten()
            if not len(rows):
                return x
            p = square_fraction(self.p_init, i, self.queries)
            side = min(max(int(round(math.sqrt(p * area))), 1), min(h, w) - 1)
            top, left = self._corners(rows, side, (h, w), error, success, gens)
            signs = torch.stack([torch.randint(0, 2, (c, 1, 1), generator=gens[r], device="cpu")
                                 for r in rows.tolist()]) * 2 - 1
            top, left, signs = top.to(x0.device), left.to(x0.device), signs.to(x0)
            ys = torch.arange(h, device=x0.device).view(1, 1, h, 1)
            xs = torch.arange(w, device=x0.device).view(1, 1, 1, w)
            window = (ys >= top) & (ys < top + side) & (xs >= left) & (xs < left + side)
            base = x0[rows]
            proposal = torch.where(window, (base + signs * bound[rows]).clamp(0, 1), x[rows])
            same = (proposal == x[rows]).flatten(1).all(dim=1)  # flip a window that is unchanged
            flipped = torch.where(window, (base - signs * bound[rows]).clamp(0, 1), x[rows])
            proposal = torch.where(same.view(-1, 1, 1, 1), flipped, proposal)
            answer = self.oracle.query(proposal, rows)
            new_loss, new_success, new_iou = self._loss(answer, targets[rows],
                                                        None if target_maps is None
                                                        else target_maps[rows])
            better = improves(new_loss, new_success, loss[rows], success[rows])
            keep = rows[better]
            x[keep] = proposal[better]
            if error is not None:
                error[keep] = (answer.maps[better] - target_maps[keep]).abs()
            loss[keep], success[keep], iou[keep] = (new_loss[better], new_success[better],
                                                    new_iou[better])
            stale[rows] += 1
            stale[keep] = 0
            spent[rows] += 1
            i += 1

    def config(self) -> dict:
        """The attack's settings, as recorded beside its results."""
        return {"attack": "random-search", "answers": self.oracle.answers, **recorded(self)}
