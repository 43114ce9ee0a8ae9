"""The layers of GRAD's fast surrogate
(:class:`~adv2.interpreters.grad_surrogate.FastSurrogate`): autograd Functions whose backward is
the model's exact derivative or the smooth surrogate's, as :class:`BackwardMode` says at the
time the backward runs.

Every layer whose double backward PyTorch makes expensive is an autograd Function here:

- convolutions (:func:`torch.conv2d`, depthwise included): the forward is ``F.conv2d``, the
  backward only the input adjoint (the same kernel autograd calls), and *its* backward one more
  convolution — PyTorch's own double backward also computes the frozen weight's gradient;
- eval-mode batch norm (:func:`F.batch_norm`): the forward is ``F.batch_norm``, the backward a
  per-channel scale;
- ReLU / ReLU6 (the modules :func:`~adv2.interpreters.smooth_copy.smooth_copy` replaces): the
  forward is exact, the backward either the exact derivative (the true gradient) or the
  softplus-β derivative σ(βz) − σ(β(z − cap)) with a closed-form second derivative (the
  surrogate's gradient);
- SiLU: exact, with a closed-form second derivative.

Everything else (normalisation, padding, pooling, linear layers, residual sums) is native
autograd. The forward values are those of the model, and the "exact" backward calls the kernels
autograd calls for the model, so the true gradient is the model's (bit for bit on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode


@dataclass
class BackwardMode:
    """What the surrogate's backward computes when it runs: the model's exact derivative with
    the model's own kernels (``smooth`` False), or the surrogate's, softplus-``beta``
    activations and whatever kernels are cheapest."""

    smooth: bool = False
    beta: float = 3.0


# ----------------------------------------------------------------------------- activations


def _smooth_slope(z: torch.Tensor, beta: float,
                  cap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """s(z) = σ(βz) − σ(β(z − cap)) (cap None: σ(βz)) and s'(z) = β·s·(1 − σ(βz) − σ(β(z −
    cap))), without a graph; in place where it can (the largest elementwise ops of a step)."""
    with torch.no_grad():
        scaled = z * beta
        low = torch.sigmoid(scaled)
        if cap is None:
            return low, (1.0 - low).mul_(low).mul_(beta)
        high = scaled.sub_(beta * cap).sigmoid_()
        slope = low - high
        return slope, low.add_(high).mul_(-beta).add_(beta).mul_(slope)


class _SmoothStep(torch.autograd.Function):
    """g·s(z) given s(z) and s'(z): differentiable in g and z in closed form."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, z: torch.Tensor, slope: torch.Tensor,
                curvature: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g, slope, curvature)
        return g * slope

    @staticmethod
    @once_differentiable
    def backward(ctx, gg: torch.Tensor):
        g, slope, curvature = ctx.saved_tensors
        return gg * slope, torch.mul(gg, g).mul_(curvature), None, None


class _Clamp(torch.autograd.Function):
    """ReLU (cap None) or ReLU6 with the backward :class:`BackwardMode` selects. The smooth
    slope is kept for a later backward at the same β (the attack's own backward through the
    forward pass)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, cap: float | None, mode: BackwardMode) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.cap, ctx.mode, ctx.smooth = cap, mode, None
        return F.relu(z) if cap is None else F.hardtanh(z, 0.0, cap)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (z,) = ctx.saved_tensors
        mode = ctx.mode
        if mode.smooth:
            if ctx.smooth is None or ctx.smooth[0] != mode.beta:
                ctx.smooth = (mode.beta, *_smooth_slope(z, mode.beta, ctx.cap))
            _, slope, curvature = ctx.smooth
            if torch.is_grad_enabled():
                return _SmoothStep.apply(g, z, slope, curvature), None, None
            return g * slope, None, None
        if ctx.cap is None:  # relu's own backward: the input and the output are positive together
            return torch.ops.aten.threshold_backward(g, z, 0.0), None, None
        return torch.ops.aten.hardtanh_backward(g, z, 0.0, ctx.cap), None, None


class _SiLUSlope(torch.autograd.Function):
    """g·silu'(z), silu'(z) = σ(z)(1 + z(1 − σ(z))); backward in closed form."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g, z)
        return torch.ops.aten.silu_backward(g, z)

    @staticmethod
    @once_differentiable
    def backward(ctx, gg: torch.Tensor):
        g, z = ctx.saved_tensors
        s = torch.sigmoid(z)
        slope = s * (1.0 + z * (1.0 - s))
        curvature = s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
        return gg * slope, gg * g * curvature


class _SiLU(torch.autograd.Function):
    """SiLU; the backward is the model's kernel without a graph, :class:`_SiLUSlope` with one."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z)
        return F.silu(z)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (z,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _SiLUSlope.apply(g, z)
        return torch.ops.aten.silu_backward(g, z)


class DualReLU(nn.Module):
    """ReLU (``cap`` None) or ReLU6 whose backward is exact or softplus-β, as ``mode`` says.

    Arguments:
        cap (float | None): the upper clamp (6 for ReLU6), None for ReLU.
        mode (BackwardMode): shared with the other units of the surrogate; read when the
            backward runs, so one forward serves both derivatives.

    Shape:
        - Input: any.
        - Output: same as the input; the values are exactly ``relu(z)`` / ``relu6(z)``.

    Examples::

        >>> mode = BackwardMode(smooth=True, beta=10.0)
        >>> y = DualReLU(6.0, mode)(z)
    """

    def __init__(self, cap: float | None, mode: BackwardMode) -> None:
        super().__init__()
        self.cap = cap
        self.mode = mode

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _Clamp.apply(z, self.cap, self.mode)


class FrozenSiLU(nn.Module):
    """SiLU with a closed-form double backward (same derivative in both modes)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _SiLU.apply(z)


# ------------------------------------------------------------------------- frozen layers

_ConvParams = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]


def _conv_input_grad(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                     params: _ConvParams) -> torch.Tensor:
    """∂⟨g, conv(x)⟩/∂x with the kernel autograd uses for a convolution with a frozen weight."""
    stride, padding, dilation, groups = params
    zeros = [0] * len(stride)
    return torch.ops.aten.convolution_backward(
        g, x, weight, None, stride, padding, dilation, False, zeros, groups,
        [True, False, False])[0]


class _ConvAdjoint(torch.autograd.Function):
    """The input adjoint of a frozen convolution, differentiable in g by one convolution."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                params: _ConvParams) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.params = params
        return _conv_input_grad(g, x, weight, params)

    @staticmethod
    @once_differentiable
    def backward(ctx, gg: torch.Tensor):
        (weight,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.params
        return F.conv2d(gg, weight, None, stride, padding, dilation, groups), None, None, None


class _FrozenConv(torch.autograd.Function):
    """A 2-d convolution with a frozen weight: the backward is the input adjoint only (the
    model's kernel without a graph, :class:`_ConvAdjoint` with one)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                params: _ConvParams) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.params = params
        stride, padding, dilation, groups = params
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, weight = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _ConvAdjoint.apply(g, x, weight, ctx.params), None, None, None
        return _conv_input_grad(g, x, weight, ctx.params), None, None, None


def _inverse_std(var: torch.Tensor, eps: float) -> torch.Tensor:
    """1/√(var + ε) as the CPU batch-norm kernel computes it (in double, then rounded)."""
    wide = var.double() if var.device.type == "cpu" else var
    return (wide + eps).sqrt().reciprocal().to(var.dtype)


class _FrozenBatchNorm(torch.autograd.Function):
    """Eval-mode batch norm; backward: the CPU kernel's dy·invstd·w in exact mode, else one
    (differentiable) per-channel scale."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                mode: BackwardMode) -> torch.Tensor:
        ctx.save_for_backward(*_bn_scale(x, var, weight, eps))
        ctx.mode = mode
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        inv, weight = ctx.saved_tensors
        if ctx.mode.smooth or torch.is_grad_enabled():
            gx = g * (inv if weight is None else inv * weight)
        else:
            gx = _bn_input_grad(g, inv, weight)
        return gx, None, None, None, None, None, None


def _bn_scale(x: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None,
              eps: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """1/√(var + ε) and the weight, shaped to broadcast over x's channels."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return _inverse_std(var, eps).view(shape), None if weight is None else weight.view(shape)


def _bn_input_grad(g: torch.Tensor, inv: torch.Tensor, weight: torch.Tensor | None):
    """The eval-mode batch-norm backward in the CPU kernel's order, dy·invstd·w."""
    out = g * inv
    return out if weight is None else out * weight


class _ConvBatchNorm(torch.autograd.Function):
    """Eval-mode batch norm of the output y of a frozen convolution of x, differentiated
    straight to x: in exact mode, the batch-norm scale then the convolution's input adjoint
    (the model's kernels); otherwise the adjoint of the convolution whose weight the scale is
    folded into (one op, and one convolution in the double backward)."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, x: torch.Tensor, conv_weight: torch.Tensor,
                params: _ConvParams, mean: torch.Tensor, var: torch.Tensor,
                weight: torch.Tensor | None, bias: torch.Tensor | None,
                eps: float, mode: BackwardMode) -> torch.Tensor:
        ctx.save_for_backward(x, conv_weight, *_bn_scale(y, var, weight, eps))
        ctx.params, ctx.mode = params, mode
        return F.batch_norm(y, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, conv_weight, inv, weight = ctx.saved_tensors
        if not (ctx.mode.smooth or torch.is_grad_enabled()):
            gx = _conv_input_grad(_bn_input_grad(g, inv, weight), x, conv_weight, ctx.params)
            return None, gx, None, None, None, None, None, None, None, None
        folded = conv_weight * (inv if weight is None else inv * weight).view(-1, 1, 1, 1)
        if torch.is_grad_enabled():
            gx = _ConvAdjoint.apply(g, x, folded, ctx.params)
        else:
            gx = _conv_input_grad(g, x, folded, ctx.params)
        return None, gx, None, None, None, None, None, None, None, None


def _args(names: tuple[str, ...], defaults: tuple, args: tuple, kwargs: dict) -> list:
    values = list(args) + list(defaults[len(args):])
    for i, name in enumerate(names):
        if name in kwargs:
            values[i] = kwargs[name]
    return values


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
            "eps")


def _frozen(t: torch.Tensor | None) -> bool:
    return t is None or not t.requires_grad


class FrozenLayers(TorchFunctionMode):
    """While active, 2-d convolutions and eval-mode batch norms with frozen parameters run as
    the Functions above, their backward as ``mode`` says (a batch norm of a frozen
    convolution's output as one :class:`_ConvBatchNorm`); other calls (and string paddings,
    training-mode batch norm) run as they are."""

    def __init__(self, mode: BackwardMode) -> None:
        super().__init__()
        self.mode = mode
        #: the last frozen convolution: its output, input, weight and parameters
        self._conv: tuple[torch.Tensor, torch.Tensor, torch.Tensor, _ConvParams] | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d:
            x, w, b, stride, padding, dilation, groups = _args(
                _CONV_ARGS, (None, None, None, 1, 0, 1, 1), args, kwargs)
            if w.dim() == 4 and not isinstance(padding, str) and _frozen(w) and _frozen(b):
                params = (_pair(stride), _pair(padding), _pair(dilation), int(groups))
                out = _FrozenConv.apply(x, w, b, params)
                self._conv = out, x, w, params
                return out
        elif func is F.batch_norm:
            x, mean, var, w, b, training, _, eps = _args(
                _BN_ARGS, (None, None, None, None, None, False, 0.1, 1e-5), args, kwargs)
            if not training and mean is not None and var is not None and _frozen(w) \
                    and _frozen(b):
                if self._conv is not None and x is self._conv[0]:
                    _, conv_x, conv_w, params = self._conv
                    self._conv = None
                    return _ConvBatchNorm.apply(x.detach(), conv_x, conv_w, params, mean, var,
                                                w, b, float(eps), self.mode)
                return _FrozenBatchNorm.apply(x, mean, var, w, b, float(eps), self.mode)
        return func(*args, **kwargs)


def _pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(e) for e in v)


__all__ = ["BackwardMode", "DualReLU", "FrozenLayers", "FrozenSiLU"]
