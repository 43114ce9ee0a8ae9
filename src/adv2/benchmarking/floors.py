"""The interpreters' noise floors: how far their maps move without an attack."""

from __future__ import annotations

import torch

from adv2 import metrics, target_maps
from adv2.interpreters import Interpreter
from adv2.target_classes import interpreter_seeds

#: one floor: its row label, L1 (N,) and IoU (N×k) against the benign maps
Floor = tuple[str, torch.Tensor, torch.Tensor]


def noise_floor(interpreter: Interpreter, x: torch.Tensor, labels: torch.Tensor,
                benign: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The interpreter's own instability: L1 and IoU (N,×k) between the benign maps and the
    maps of the same images plus seeded uniform noise in {−1, 0, +1}/255 (same class, same
    interpreter settings and seed). An attacked map cannot be expected closer than this."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randint(-1, 2, x.shape, generator=gen, device="cpu").to(x) / 255  # host draws
    noisy = target_maps.benign(interpreter, (x + noise).clamp(0, 1), labels)
    return metrics.l1(noisy, benign), metrics.iou(noisy, benign)


def benign_and_floors(interpreter: Interpreter, x: torch.Tensor, labels: torch.Tensor,
                      keys: list[str], seed: int) -> tuple[torch.Tensor, list[Floor]]:
    """The benign maps under the attack's per-image seeds and the interpreter's floors, as
    (row label, L1 (N,), IoU (N×k)): ±1/255 noise (:func:`noise_floor`) and, for a stochastic
    interpreter, the same image under the judge's seeds (a defender redraws). The interpreter
    is left with the attack's seeds."""
    seeds = interpreter_seeds(seed, keys)
    interpreter.use_seeds(seeds)
    benign = target_maps.benign(interpreter, x, labels)
    floors = [("floor (±1/255 noise)", *noise_floor(interpreter, x, labels, benign, seed))]
    if interpreter.stochastic:
        interpreter.use_seeds(interpreter_seeds(seed, keys, judge=True))
        redrawn = target_maps.benign(interpreter, x, labels)
        floors.append(("floor (another seed)", metrics.l1(redrawn, benign),
                       metrics.iou(redrawn, benign)))
        interpreter.use_seeds(seeds)
    return benign, floors
