"""A per-image search over λ: rerun the joint stage with each image's λ raised or lowered.

One λ schedule serves a batch, but the weight that still lets the target win differs from
image to image (most with a support: where few pixels are free, a λ that matches the map of
one image costs another its success). As C&W search their constant per image, a run
*succeeds* at an image's scale when it found a successful iterate closer to the target map than
its start (the warm start, which is usually successful already), and each rerun multiplies
an image's λ by ``factor`` while its runs have only succeeded, divides it by ``factor`` while
they have only failed, and otherwise takes the geometric mean of the largest scale that
succeeded and the smallest that failed. Every run starts from the same warm start; each image
keeps its successful iterate of lowest interpretation distance over all runs. An observer of
the runs sees each one's judgements from step 0, with that run's passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from adv2.attacks.engine import Descent
    from adv2.attacks.iterates import Trajectory


@dataclass(frozen=True)
class LamSearch:
    """``runs`` reruns of the joint stage with per-image λ scales (see the module docstring).

    Arguments:
        runs: reruns after the first run (each costs about one joint stage); factor: how far
        an image's λ moves while only successes or only failures are known.

    Examples:
        >>> ADV2(model, cam, lam_search=LamSearch(runs=2))  # doctest: +SKIP
    """

    runs: int = 1
    factor: float = 4.0

    def __post_init__(self) -> None:
        if self.runs < 1 or not self.factor > 1:
            raise ValueError("LamSearch needs runs ≥ 1 and factor > 1 (no search: None)")

    def __call__(self, descent: Descent, x0: torch.Tensor, x_start: torch.Tensor,
                 targets: torch.Tensor, target_maps: torch.Tensor,
                 support: torch.Tensor | None = None) -> Trajectory:
        """The best of 1 + ``runs`` descents of ``descent`` (arguments as
        :meth:`~adv2.attacks.engine.Descent.run`); passes are summed over the runs."""
        n = x0.shape[0]
        scale = torch.ones(n, device=x0.device)
        succeeded = torch.zeros(n, device=x0.device)  # the largest scale that succeeded (0)
        failed = torch.full((n,), math.inf, device=x0.device)  # the smallest that failed
        best = descent.run(x0, x_start, targets, target_maps, support)
        improved = best.improved
        for _ in range(self.runs):
            succeeded = torch.where(improved, torch.maximum(succeeded, scale), succeeded)
            failed = torch.where(improved, failed, torch.minimum(failed, scale))
            scale = torch.where(succeeded == 0, failed / self.factor,
                                torch.where(failed.isinf(), succeeded * self.factor,
                                            (succeeded * failed).sqrt()))
            rerun = descent.run(x0, x_start, targets, target_maps, support, lam_scale=scale)
            improved = rerun.improved
            better = rerun.found & (rerun.distance < best.distance)
            best.x = torch.where(better[:, None, None, None], rerun.x, best.x)
            best.distance = torch.where(better, rerun.distance, best.distance)
            best.found = best.found | rerun.found
            best.passes = best.passes + rerun.passes
        return best
