"""GRAD's fast surrogate: the true gradient and the smooth surrogate's differentiable gradient
from one forward pass through frozen layers.

The network runs once, with its ReLU, ReLU6 and SiLU modules and its frozen convolutions and
eval-mode batch norms replaced by the autograd Functions of
:mod:`~adv2.interpreters.surrogate_layers`, whose backward is the model's exact derivative (the
true gradient, bit for bit on the CPU) or the softplus-β surrogate's; everything else is native
autograd.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from adv2.interpreters.smooth_copy import follow, smooth_copy
from adv2.interpreters.surrogate_layers import BackwardMode, DualReLU, FrozenLayers, FrozenSiLU
from adv2.models import Classifier, MeanStd

log = logging.getLogger(__name__)


#: leaf layers the fast surrogate is tested on; any other leaf module sends GRAD to the generic
#: SmoothReLU surrogate
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6, nn.SiLU, nn.Linear,
    nn.Identity, nn.Flatten, nn.Dropout, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, MeanStd,
)


def unsupported_layers(model: nn.Module) -> list[str]:
    """``name (type)`` of the leaf modules of ``model`` outside :data:`SUPPORTED_LAYERS`."""
    return [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
            if not any(True for _ in m.children()) and not isinstance(m, SUPPORTED_LAYERS)
            and name]


def _fast_unit(module: nn.Module, mode: BackwardMode) -> nn.Module:
    if isinstance(module, nn.SiLU):
        return FrozenSiLU()
    return DualReLU(6.0 if isinstance(module, nn.ReLU6) else None, mode)


class FastSurrogate:
    """The true gradient and the smooth surrogate's differentiable gradient of the summed
    cross-entropy w.r.t. the input, from one forward pass.

    A copy of the model whose ReLU/ReLU6 modules are :class:`DualReLU` and whose SiLU modules
    are :class:`FrozenSiLU`, run under :class:`FrozenLayers`. The original model is untouched.

    Arguments:
        model (Classifier): the frozen classifier; every leaf module must be one of
            :data:`SUPPORTED_LAYERS` (see :meth:`build`).

    Shape:
        - x: (N, 3, H, W) in [0, 1]; classes: (N,) long.
        - Returns: logits (N, C), the true gradient (N, 3, H, W, no graph) and the
          surrogate's gradient (N, 3, H, W, differentiable w.r.t. x).

    Examples::

        >>> fast = FastSurrogate.build(model)
        >>> logits, true_grad, smooth_grad = fast(x.requires_grad_(), classes, beta=5.0)
    """

    def __init__(self, model: Classifier) -> None:
        self.mode = BackwardMode()
        self.model = model
        self.net = smooth_copy(model, lambda m: _fast_unit(m, self.mode),
                               kinds=(nn.ReLU, nn.ReLU6, nn.SiLU))

    @classmethod
    def build(cls, model: Classifier) -> FastSurrogate | None:
        """The fast surrogate of ``model``, or None (logged, naming the layers) when the model
        has a leaf layer outside :data:`SUPPORTED_LAYERS`."""
        unknown = unsupported_layers(model)
        if unknown:
            log.warning("GRAD: no fast surrogate for model %r (unsupported layers: %s); using "
                        "the generic SmoothReLU surrogate", getattr(model, "name", "?"),
                        ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
            return None
        return cls(model)

    def __call__(self, x: torch.Tensor, classes: torch.Tensor, beta: float,
                 score: Score | None = None,
                 exact: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Logits, the true gradient (None without ``exact``) and the surrogate's differentiable
        gradient of ``score(logits, classes)`` (default: the summed cross-entropy) w.r.t. x.
        x may be computed from another tensor (its rows e.g. interpolations of one image):
        the surrogate's gradient is differentiable through that computation."""
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            logits = self.forward(xg)
            true_grad, smooth_grad = self.gradients((score or cross_entropy_sum)(logits, classes),
                                                    xg, beta, exact)
        return logits, true_grad, smooth_grad

    def values(self, x: torch.Tensor, classes: torch.Tensor, beta: float, score: Score,
               exact: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The true gradient (None without ``exact``) and the surrogate's at β of
        ``score(logits, classes)`` w.r.t. x, as values only (no graph): one pass each."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            return self.gradients(score(self.forward(xg), classes), xg, beta, exact,
                                  create_graph=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The surrogate's logits of x (the model's values), its graph ready for
        :meth:`gradients`; forward hooks on ``self.net``'s modules see its activations."""
        with torch.enable_grad(), FrozenLayers(self.mode):
            return follow(self.net, self.model)(x)

    def gradients(self, loss: torch.Tensor, wrt: torch.Tensor, beta: float,
                  exact: bool = True, create_graph: bool = True
                  ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The true gradient of ``loss`` (a scalar of :meth:`forward`'s graph) w.r.t. ``wrt``
        (None without ``exact``) and the surrogate's at β, differentiable w.r.t. the input
        with ``create_graph``."""
        with torch.enable_grad():
            true_grad = None
            if exact:
                self.mode.smooth = False
                (true_grad,) = torch.autograd.grad(loss, wrt, retain_graph=True)
            self.mode.smooth, self.mode.beta = True, beta
            (smooth_grad,) = torch.autograd.grad(loss, wrt, create_graph=create_graph)
        return true_grad, smooth_grad


#: ``score(logits, classes) -> scalar`` whose input gradient an interpreter explains
Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_sum(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Σ_n CE(f(x_n), c_n): GRAD's score (each image's gradient is its own)."""
    return F.cross_entropy(logits, classes, reduction="sum")


def logit_sum(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Σ_n f(x_n)[c_n]: the class logit, as Captum attributes with ``target=`` (rows beyond
    ``len(classes)`` are left out, e.g. extra rows evaluated for their logits only)."""
    return logits[:len(classes)].gather(1, classes[:, None]).sum()


def beta_at(progress: float, start: float, end: float) -> float:
    """Surrogate β at ``progress`` ∈ [0,1]: geometric from ``start`` to ``end``."""
    lo, hi = math.log(start), math.log(end)
    return math.exp(lo + (hi - lo) * min(max(progress, 0.0), 1.0))



__all__ = [
    "SUPPORTED_LAYERS",
    "FastSurrogate",
    "Score",
    "beta_at",
    "cross_entropy_sum",
    "logit_sum",
    "unsupported_layers",
]
