"""Target classes: which class each attacked image is pushed to, seeded per image.

A sample's target is drawn from its own seed (:func:`seed_of` of the user's seed and the
sample's key), so ``adv2 attack`` and ``adv2 run`` choose the same target for the same image
and seed, whatever other files the folder holds.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def seed_of(seed: int, key: str) -> int:
    """A 32-bit seed from the user's seed and a sample key (stable across runs and folders)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(key.encode())]).generate_state(1)[0])


def interpreter_seeds(seed: int, keys: list[str], judge: bool = False) -> list[int]:
    """Each image's seed for a stochastic interpreter's draws (SmoothGrad's noise): the
    attack's, or with ``judge`` the reviewer's, an independent seed the attack never sees
    (the seeds of a defender who redraws)."""
    return [seed_of(seed, f"{key}#{'judge' if judge else 'attack'}") for key in keys]


def attack_seeds(seed: int, keys: list[str]) -> list[int]:
    """Each image's seed for an attack's own draws (PGD's random start, a black-box search;
    :mod:`adv2.attacks.draws`), independent of the interpreter's."""
    return [seed_of(seed, f"{key}#draws") for key in keys]


def choose_targets(labels: torch.Tensor, n_classes: int, seed: int, fixed: int | None,
                   allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Target classes: ``fixed`` for all, or uniform over classes ≠ label (over ``allowed``
    classes when given) from ``numpy.random.default_rng(seed)``."""
    if fixed is not None:
        return torch.full_like(labels, fixed)
    rng = np.random.default_rng(seed)
    pool = np.arange(n_classes) if allowed is None else np.unique(allowed.cpu().numpy())
    out = []
    for y in labels.tolist():
        choices = pool[pool != y]
        if choices.size == 0:
            raise ValueError("no target class different from the label is available")
        out.append(int(rng.choice(choices)))
    return torch.tensor(out, device=labels.device)


def per_image_targets(keys: list[str], labels: torch.Tensor, n_classes: int, seed: int,
                      fixed: int | None, allowed: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[int, str]]:
    """Each image's target class, drawn by :func:`choose_targets` from its own seed
    (:func:`seed_of` of ``seed`` and its key), so that other images change nothing of it.

    Returns the targets (−1 where none) and, per index of an image that cannot be attacked,
    why (its label is the target, or no other class is allowed).
    """
    tgts, skipped = [], {}
    for i, key in enumerate(keys):
        try:
            t = int(choose_targets(labels[i:i + 1], n_classes, seed_of(seed, key), fixed,
                                   allowed)[0])
        except ValueError as exc:
            t, skipped[i] = -1, str(exc)
        if t == int(labels[i]):
            skipped[i] = f"label equals the target class {t}"
        tgts.append(t)
    return torch.tensor(tgts, device=labels.device), skipped
