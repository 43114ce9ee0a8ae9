"""Update rules on the perturbation, with per-sample state.

``step(grad, rows)`` returns the descent step (to subtract) for the batch rows ``rows``; state is
kept per sample so that rows can leave the active set at any time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Optimizer(ABC):
    @abstractmethod
    def reset(self, like: torch.Tensor) -> None:
        """Start a new run for a batch shaped like ``like``."""

    @abstractmethod
    def step(self, grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor: ...


class SignStep(Optimizer):
    """x ← x − lr · sign(∇), the paper's update (lr = 1/255 keeps x on the uint8 lattice)."""

    def __init__(self, lr: float = 1 / 255) -> None:
        self.lr = lr

    def reset(self, like: torch.Tensor) -> None:
        pass

    def step(self, grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.lr * grad.sign()


class Adam(Optimizer):
    """Adam on the perturbation, with per-sample moments and step counts."""

    def __init__(self, lr: float = 1 / 255, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-12) -> None:
        self.lr, self.betas, self.eps = lr, betas, eps

    def reset(self, like: torch.Tensor) -> None:
        self.m = torch.zeros_like(like)
        self.v = torch.zeros_like(like)
        self.t = torch.zeros(like.shape[0], device=like.device)

    def step(self, grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.betas
        self.t[rows] += 1
        self.m[rows] = b1 * self.m[rows] + (1 - b1) * grad
        self.v[rows] = b2 * self.v[rows] + (1 - b2) * grad * grad
        shape = (-1,) + (1,) * (grad.dim() - 1)
        t = self.t[rows].view(shape)
        m_hat = self.m[rows] / (1 - b1**t)
        v_hat = self.v[rows] / (1 - b2**t)
        return self.lr * m_hat / (v_hat.sqrt() + self.eps)


OPTIMIZERS = {"sign": SignStep, "adam": Adam}
