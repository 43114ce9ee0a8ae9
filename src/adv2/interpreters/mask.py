"""MASK: meaningful perturbation (Fong & Vedaldi, ICCV 2017), and how ADV² differentiates it.

The map is 1 − m, where the mask m ∈ [0,1]^{h×w} (h = H/scale) minimises

    l1 · Σ|1 − m|  +  tv · Σ_ij ((Δx m)² + (Δy m)²)^{β/2}  +  p_c(Φ(x; m))

with Φ(x; m) = M·x + (1 − M)·blur(x), M the mask upsampled bilinearly to the image and blurred,
p_c the softmax probability of class c, and the perturbed image jittered by a random shift of up
to ``jitter`` pixels per iteration. Adam (``lr``) for ``iterations`` steps from a constant
``init``, clamped to [0,1] after each step. Defaults are the original paper's (300 iterations,
Adam 0.1, l1 1e-4 on the sum, tv 1e-2 with β = 3, 1/8 resolution, mask blur σ 5, null image
blur σ 10, jitter 4), with an isotropic TV and init 0.5. Each image's jitter offsets come
from ``torch.Generator`` seeded with that image's seed (:meth:`Interpreter.use_seeds`; the
``seed`` setting until seeds are set), so a map is a function of the image, the class and its
seed, whatever the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from adv2.filters import blur
from adv2.interpreters.base import Interpreter, Verification
from adv2.models import Classifier


def tv_norm(m: torch.Tensor, beta: float, eps: float = 1e-8) -> torch.Tensor:
    """Isotropic total variation Σ ((m[i+1,j] − m[i,j])² + (m[i,j+1] − m[i,j])²)^{β/2} per
    sample, over cells that have both neighbours. m: N×1×h×w → (N,)."""
    dy = m[:, :, 1:, :-1] - m[:, :, :-1, :-1]
    dx = m[:, :, :-1, 1:] - m[:, :, :-1, :-1]
    return (dy.square() + dx.square() + eps).pow(beta / 2).flatten(1).sum(dim=1)


@dataclass
class AdamState:
    """Per-sample Adam state of the inner mask optimisation (all N×1×h×w, t: (N,))."""

    mask: torch.Tensor
    m1: torch.Tensor
    m2: torch.Tensor
    t: torch.Tensor

    @classmethod
    def start(cls, mask: torch.Tensor) -> "AdamState":
        zeros = torch.zeros_like(mask)
        return cls(mask, zeros, zeros.clone(), torch.zeros(mask.shape[0], device=mask.device))

    def rows(self, rows: torch.Tensor) -> "AdamState":
        return AdamState(self.mask[rows], self.m1[rows], self.m2[rows], self.t[rows])

    def detach(self) -> "AdamState":
        return AdamState(self.mask.detach(), self.m1.detach(), self.m2.detach(), self.t)

    def store(self, rows: torch.Tensor, other: "AdamState") -> None:
        other = other.detach()
        self.mask[rows], self.m1[rows], self.m2[rows], self.t[rows] = (
            other.mask, other.m1, other.m2, other.t)


#: attack strategies of :meth:`MASK.attack_loss`
STRATEGIES = ("track", "alt")


class MASK(Interpreter):
    """Meaningful-perturbation masks at 1/``scale`` resolution (28×28 for 224²); see module doc.

    Two attack strategies (``strategy``), both judged by the engine with :meth:`explain` (a cold
    start, as a user runs it) every ``verify_every`` steps and when an image succeeds again,
    since neither returns true maps (:meth:`verification`):

    - ``track``: a warm-started inner mask per image tracks the optimum as the image changes
      (``track_steps`` Adam steps per attack step, restarted from each verification, see
      :meth:`sync`), and ``lookahead`` further Adam steps are unrolled
      and differentiated with respect to the image; the map loss compares their result with
      the target map.
    - ``alt`` (the ADV² authors' cheap variant): the inner objective evaluated at the target
      mask; no inner optimisation.

    Arguments:
        model: the classifier. iterations, lr, l1, tv, tv_beta, scale, mask_sigma, null_sigma,
            jitter, init: the inner problem (module docstring). seed: every image's jitter
            seed until :meth:`use_seeds` sets them. track_steps, lookahead, verify_every,
            strategy: how ADV² differentiates it (above).

    Shape:
        x: float N×3×H×W in [0,1] on the model's device; classes: (N,) long.

    Returns:
        ``mask(x, classes)``: N×1×H/scale×W/scale maps 1 − m in [0,1] (a cold-start run,
        not differentiable in x); ``mask.explain`` also the logits.

    Examples:
        >>> maps = MASK(model, iterations=300)(x, labels)  # doctest: +SKIP
    """

    name = "mask"
    stochastic = True
    attack_defaults = {"steps": 100, "warm_steps": 50, "optimizer": "adam", "lr": 1 / 255,
                       "lr_decay": 1.0, "lam": "5:10", "pred_loss": "ce", "map_loss": "mse",
                       "patience": 20, "step_search": True}
    # adaptive ADV²'s λ multiplier
    adaptive_lam_scale = 8.0
    attack_strategies = STRATEGIES

    def __init__(
        self,
        model: Classifier,
        *,
        iterations: int = 300,
        lr: float = 0.1,
        l1: float = 1e-4,
        tv: float = 1e-2,
        tv_beta: float = 3.0,
        scale: int = 8,
        mask_sigma: float = 5.0,
        null_sigma: float = 10.0,
        jitter: int = 4,
        init: float = 0.5,
        seed: int = 0,
        track_steps: int = 1,
        lookahead: int = 4,
        verify_every: int = 25,
        strategy: str = "track",
    ) -> None:
        super().__init__(model)
        self.iterations, self.lr, self.l1, self.tv, self.tv_beta = iterations, lr, l1, tv, tv_beta
        self.scale, self.mask_sigma, self.null_sigma = scale, mask_sigma, null_sigma
        self.jitter, self.init, self.seed = jitter, init, seed
        self.track_steps, self.lookahead, self.verify_every = track_steps, lookahead, verify_every
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown MASK attack strategy {strategy!r}; choose from "
                             f"{', '.join(STRATEGIES)}")
        self.strategy = strategy
        # track: one pass per tracking step, two per unrolled (double-backprop) step, one for
        # the logits; alt: the objective at the target mask and the logits
        self.passes_per_step = track_steps + 2 * lookahead + 1 if strategy == "track" else 2
        self.explain_passes = iterations
        self._state: AdamState | None = None
        self._alt_calls = 0
        self._drawn: dict[int, torch.Tensor] = {}

    def offsets(self, seeds: Sequence[int]) -> torch.Tensor:
        """Each image's jitter offsets (N×count×2, count = iterations + track_steps +
        lookahead), drawn on the host from its seed (the same on every device) and kept there:
        each step reads them as Python ints without a device sync."""
        count = self.iterations + self.track_steps + self.lookahead
        for seed in set(seeds) - self._drawn.keys():
            gen = torch.Generator().manual_seed(seed)
            self._drawn[seed] = torch.randint(0, 2 * self.jitter + 1, (count, 2), generator=gen,
                                              device="cpu")
        return torch.stack([self._drawn[seed] for seed in seeds])

    def resolution(self, height: int, width: int) -> tuple[int, int]:
        return height // self.scale, width // self.scale

    def config(self) -> dict:
        keys = ("iterations", "lr", "l1", "tv", "tv_beta", "scale", "mask_sigma", "null_sigma",
                "jitter", "init", "seed", "track_steps", "lookahead", "verify_every", "strategy")
        return {"name": self.name, **{k: getattr(self, k) for k in keys}}

    # ------------------------------------------------------------------ the inner problem
    def objective(
        self, mask: torch.Tensor, x: torch.Tensor, null: torch.Tensor, classes: torch.Tensor,
        offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sample MASK objective (N,) of masks N×1×h×w for images x and null images,
        each perturbed image shifted by its row of the host offsets (N×2)."""
        up = F.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=False)
        up = blur(up, self.mask_sigma)
        perturbed = up * x + (1 - up) * null
        if offset is not None and self.jitter > 0:
            j, (h, w) = self.jitter, x.shape[-2:]
            padded = F.pad(perturbed, (j, j, j, j), mode="reflect")
            shifts = offset.tolist()
            if all(s == shifts[0] for s in shifts):  # one shift for the batch
                (dy, dx) = shifts[0]
                perturbed = padded[..., dy:dy + h, dx:dx + w]
            else:
                perturbed = torch.cat([padded[i:i + 1, :, dy:dy + h, dx:dx + w]
                                       for i, (dy, dx) in enumerate(shifts)])
        prob = self.model(perturbed).softmax(dim=1).gather(1, classes.view(-1, 1)).squeeze(1)
        area = (1 - mask).abs().flatten(1).sum(dim=1)
        return self.l1 * area + self.tv * tv_norm(mask, self.tv_beta) + prob

    def adam_steps(
        self, state: AdamState, x: torch.Tensor, null: torch.Tensor, classes: torch.Tensor,
        offsets: torch.Tensor, steps: int, first: int, create_graph: bool,
    ) -> AdamState:
        """``steps`` Adam steps (β 0.9/0.999) on the masks, clamped to [0,1]; each image's
        jitter offsets (:meth:`offsets`) ``first``, ``first`` + 1, ... With ``create_graph``
        the steps stay differentiable with respect to x (and the starting state)."""
        b1, b2 = 0.9, 0.999
        for k in range(steps):
            mask = state.mask
            if not (create_graph and mask.requires_grad):
                mask = mask.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = self.objective(mask, x, null, classes, offsets[:, first + k]).sum()
                (grad,) = torch.autograd.grad(loss, mask, create_graph=create_graph)
            t = state.t + 1
            m1 = b1 * state.m1 + (1 - b1) * grad
            m2 = b2 * state.m2 + (1 - b2) * grad * grad
            shape = (-1, 1, 1, 1)
            m1_hat = m1 / (1 - b1 ** t).view(shape)
            m2_hat = m2 / (1 - b2 ** t).view(shape)
            new = (mask - self.lr * m1_hat / ((m2_hat + 1e-16).sqrt() + 1e-8)).clamp(0, 1)
            state = AdamState(new, m1, m2, t)
            if not create_graph:
                state = state.detach()
        return state

    def cold_start(self, x: torch.Tensor, classes: torch.Tensor,
                   rows: torch.Tensor | None = None) -> AdamState:
        """A full run from the constant init, as a user runs the interpreter, with the
        jitter of the seeded batch's ``rows`` (all of it when None)."""
        h, w = self.resolution(*x.shape[-2:])
        start = AdamState.start(torch.full((x.shape[0], 1, h, w), float(self.init),
                                           device=x.device))
        x = x.detach()
        return self.adam_steps(start, x, blur(x, self.null_sigma), classes,
                               self.offsets(self.image_seeds(len(x), rows)), self.iterations, 0,
                               create_graph=False)

    # ------------------------------------------------------------------ the interface
    def explain(self, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and 1 − m of a cold-start run (not differentiable with respect to x)."""
        return self.explain_rows(x, classes, None)

    def explain_rows(self, x: torch.Tensor, classes: torch.Tensor,
                     rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`explain` of the seeded batch's ``rows``, with their seeds' jitter."""
        with torch.no_grad():
            logits = self.model(x)
        return logits, 1 - self.cold_start(x, classes, rows).mask

    def start_attack(self, x: torch.Tensor, classes: torch.Tensor,
                     clean: torch.Tensor | None = None) -> int:
        """Reset the attack state. Tracking starts from the engine's first verification (a
        cold-start run, see :meth:`sync`), so this costs no pass."""
        self._alt_calls = 0
        h, w = self.resolution(*x.shape[-2:])
        self._state = AdamState.start(torch.full((x.shape[0], 1, h, w), float(self.init),
                                                 device=x.device))
        return 0

    def verification(self) -> Verification:
        """Cold-start judgements every ``verify_every`` steps and on renewed success; each
        restarts tracking (:meth:`sync`)."""
        return Verification(self.verify_every, on_success=True, after=self.sync)

    def sync(self, rows: torch.Tensor, maps: torch.Tensor) -> None:
        """Restart tracking of ``rows`` from verified maps, with fresh Adam moments."""
        assert self._state is not None
        self._state.store(rows, AdamState.start(1 - maps.detach()))

    def attack_loss(
        self, x: torch.Tensor, classes: torch.Tensor, target_maps: torch.Tensor,
        map_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], progress: float,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``track``: ``map_loss`` on the lookahead maps of :meth:`attack_forward`. ``alt`` (the
        authors' cheap variant): the inner objective at the target mask 1 − target_maps, whose
        only term that depends on x is p_c(Φ(x; m_t)): deleting the target's important region
        must destroy the class. Each image's jitter offset cycles through its sequence."""
        if self.strategy == "track":
            return super().attack_loss(x, classes, target_maps, map_loss, progress, rows)
        offset = self.offsets(self.image_seeds(len(x), rows))[:, self._alt_calls % self.iterations]
        self._alt_calls += 1
        loss = self.objective(1 - target_maps, x, blur(x, self.null_sigma), classes, offset)
        return self.model(x), loss

    def attack_forward(
        self, x: torch.Tensor, classes: torch.Tensor, progress: float,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._state is None:
            raise RuntimeError("MASK.attack_forward needs start_attack() first")
        offsets = self.offsets(self.image_seeds(len(x), rows))
        rows = torch.arange(x.shape[0], device=x.device) if rows is None else rows
        null = blur(x, self.null_sigma)
        state = self.adam_steps(self._state.rows(rows), x.detach(), null.detach(), classes,
                                offsets, self.track_steps, self.iterations, create_graph=False)
        self._state.store(rows, state)
        ahead = self.adam_steps(state, x, null, classes, offsets, self.lookahead,
                                self.iterations + self.track_steps, create_graph=True)
        return self.model(x), 1 - ahead.mask
