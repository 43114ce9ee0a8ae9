"""Target maps m_t for ADV², all N×1×h×w in [0,1] at the interpreter's native resolution."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from adv2.interpreters import Interpreter

KINDS = ("benign", "other", "shape")


def benign(interpreter: Interpreter, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The map of the clean image for its true class (the paper's default). x: N×3×H×W."""
    with torch.no_grad():
        return interpreter(x, labels).detach()


def other(
    interpreter: Interpreter,
    targets: torch.Tensor,
    pool_x: torch.Tensor,
    pool_labels: torch.Tensor,
    seed: int,
    pool_pred: torch.Tensor | None = None,
) -> torch.Tensor:
    """For each target class, the map of a randomly chosen (seeded) pool image correctly
    classified as that class. ``pool_x``: M×3×H×W; ``pool_labels``: (M,); ``pool_pred``: the
    model's predictions for the pool when already known. Raises when a target class has no
    correctly classified image in the pool."""
    if pool_pred is None:
        with torch.no_grad():
            pool_pred = interpreter.model(pool_x).argmax(dim=1)
    correct = (pool_pred == pool_labels).cpu()
    pool_labels = pool_labels.cpu()
    gen = torch.Generator().manual_seed(seed)  # the host's, so every device picks the same
    picks = []
    for t in targets.tolist():
        rows = torch.nonzero(correct & (pool_labels == t)).flatten()
        if rows.numel() == 0:
            raise ValueError(f"no correctly classified image of target class {t} in the pool")
        picks.append(int(rows[torch.randint(rows.numel(), (1,), generator=gen, device="cpu")]))
    index = torch.tensor(picks, device=pool_x.device)
    with torch.no_grad():
        return interpreter(pool_x[index], targets).detach()


def shape(n: int, resolution: tuple[int, int], seed: int, size: int = 224) -> torch.Tensor:
    """Random discs or rotated rectangles (radius / half-sides 30–60 px on ``size``², angle
    ±30°, centre in [40,184]² scaled to ``size``), inside U(0.9,1), outside U(0,0.1), drawn on
    ``size``² and area-resized to ``resolution``. Seeded by ``seed`` alone."""
    rng = np.random.default_rng(seed)
    scale = size / 224
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    maps = []
    for _ in range(n):
        cy, cx = rng.uniform(40, 184, size=2) * scale
        if rng.random() < 0.5:
            radius = rng.uniform(30, 60) * scale
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        else:
            hy, hx = rng.uniform(30, 60, size=2) * scale
            angle = math.radians(rng.uniform(-30, 30))
            u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
            v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
            inside = (np.abs(u) <= hx) & (np.abs(v) <= hy)
        values = np.where(inside, rng.uniform(0.9, 1.0, inside.shape),
                          rng.uniform(0.0, 0.1, inside.shape))
        maps.append(values)
    full = torch.from_numpy(np.stack(maps)).float().unsqueeze(1)
    return F.interpolate(full, size=resolution, mode="area").clamp(0, 1)
