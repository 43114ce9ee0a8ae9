"""Grad-CAM (Selvaraju et al. 2017) at any named layer, as Captum's ``LayerGradCam``."""

from __future__ import annotations

import torch
from torch import nn

from adv2.interpreters.base import Interpreter, minmax
from adv2.interpreters.grad_surrogate import (FastSurrogate, beta_at, logit_sum,
                                              unsupported_layers)
from adv2.models import Classifier


def layer_of(net: nn.Module, layer: str) -> nn.Module:
    """The module of ``net`` named ``layer`` (a name of ``net.named_modules()``)."""
    modules = dict(net.named_modules())
    if layer not in modules:
        near = [n for n in modules if n and (layer in n or n in layer)][:8]
        raise ValueError(f"no layer {layer!r} in the model" + (
            f"; similar names: {', '.join(near)}" if near else
            "; names are those of Classifier.named_modules(), e.g. 'body'"))
    return modules[layer]


def activations_and_logits(module: nn.Module, run) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of ``module`` during ``run()`` (which returns logits), and the logits. The
    layers after it see a view of that output, so that they compute from it: under
    :class:`~adv2.interpreters.surrogate_layers.FrozenLayers` a batch norm would otherwise fuse
    with a hooked convolution and bypass its output, and no gradient would reach it."""
    seen: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor:
        seen.append(out.view_as(out))
        return seen[-1]
    handle = module.register_forward_hook(keep)
    try:
        logits = run()
    finally:
        handle.remove()
    if not seen:
        raise ValueError("the Grad-CAM layer is not used by the model's forward pass")
    return seen[-1], logits


def grad_cam(acts: torch.Tensor, grads: torch.Tensor, relu: bool) -> torch.Tensor:
    """Σ_k mean_ij(∂y/∂A_k) A_k (N×1×h×w), ReLU'd with ``relu``, as Captum computes it."""
    cam = torch.sum(torch.mean(grads, dim=(2, 3), keepdim=True) * acts, dim=1, keepdim=True)
    return torch.relu(cam) if relu else cam


class GradCAM(Interpreter):
    """Grad-CAM of the class logit at ``layer``: ReLU(Σ_k α_k A_k) with α_k the spatial mean
    of ∂f(x)[c]/∂A_k, min–max normalised per image, at the layer's resolution (no
    upsampling, as CAM here).

    ADV² differentiates the weights α through the fast ReLU surrogate of the layers after
    ``layer`` (their ReLU/ReLU6 derivatives have no second derivative), and the whole attack
    gradient with the surrogate's softplus-β derivatives, as GRAD's; the map's value is the
    true one.

    Arguments:
        model: the classifier. layer: a name of ``model.named_modules()`` (default ``body``:
            the last feature map; e.g. lite0's 14×14 stage ``body.inner.blocks.4``).
        relu: the ReLU of Grad-CAM (Captum's ``relu_attributions``). beta_start, beta_end:
            the surrogate's β over the attack.

    Shape:
        x: N×3×H×W in [0,1]; classes: (N,). Maps: N×1×h×w in [0,1], h×w the layer's.

    Examples:
        >>> maps = GradCAM(model, layer="body.inner.blocks.4")(x, labels)  # doctest: +SKIP
    """

    name = "gradcam"
    # chosen at lite0's 14×14 stage on images the benchmark does not report
    attack_defaults = {"steps": 130, "warm_steps": 30, "optimizer": "adam", "lr": 0.004,
                       "lr_decay": 0.05, "lam": "100", "pred_loss": "cw", "map_loss": "mse",
                       "patience": 0, "step_search": False}
    passes_per_step = 2  # the true weights and the surrogate's double backpropagation

    def __init__(self, model: Classifier, layer: str = "body", relu: bool = True,
                 beta_start: float = 10.0, beta_end: float = 60.0) -> None:
        super().__init__(model)
        self.module = layer_of(model, layer)
        self.layer, self.relu = layer, relu
        self.beta_start, self.beta_end = beta_start, beta_end
        self.fast = FastSurrogate(model) if not unsupported_layers(model) else None

    def resolution(self, height: int, width: int) -> tuple[int, int]:
        with torch.no_grad():
            acts, _ = activations_and_logits(self.module, lambda: self.model(
                torch.zeros(1, 3, height, width, device=self.model.device)))
        return acts.shape[-2], acts.shape[-1]

    def explain(self, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        create = x.requires_grad
        with torch.enable_grad():
            xg = x if create else x.detach().requires_grad_(True)
            acts, logits = activations_and_logits(self.module,
                                                  lambda: self.model(xg))
            (grads,) = torch.autograd.grad(logit_sum(logits, classes), acts,
                                           create_graph=create)
        cam = grad_cam(acts if create else acts.detach(), grads, self.relu)
        return (logits if create else logits.detach()), minmax(cam)

    def attack_forward(self, x: torch.Tensor, classes: torch.Tensor, progress: float,
                       rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The true logits and map, with the Jacobian of the surrogate's map."""
        if self.fast is None:
            raise ValueError(f"{self.name}: ADV² needs the fast ReLU surrogate, which does not "
                             f"support this model's layers: "
                             f"{', '.join(unsupported_layers(self.model)[:5])}")
        module = layer_of(self.fast.net, self.layer)
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        acts, logits = activations_and_logits(module, lambda: self.fast.forward(xg))
        true, smooth = self.fast.gradients(logit_sum(logits, classes), acts,
                                           beta_at(progress, self.beta_start, self.beta_end))
        true_maps = minmax(grad_cam(acts.detach(), true, self.relu))
        sur_maps = minmax(grad_cam(acts, smooth, self.relu))
        return logits, true_maps + (sur_maps - sur_maps.detach())

    def config(self) -> dict:
        return {"name": self.name, "layer": self.layer, "relu": self.relu,
                "beta_start": self.beta_start, "beta_end": self.beta_end}
