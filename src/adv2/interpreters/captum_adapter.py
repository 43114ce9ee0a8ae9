"""Captum's attributions as interpreters: ``captum:<Name>`` wraps ``captum.attr.<Name>``.

``--interpreter captum:IntegratedGradients`` (or ``captum:Saliency``, ``captum:Occlusion``,
``captum:LayerGradCam`` ...) explains the classifier with Captum's own code: ``attribute(x,
target=classes, **settings)``, outside the attack's graph. Input attributions become GRAD-like
maps (:func:`~adv2.interpreters.grad.gradient_map`: |a|, max over channels, ``pool``×``pool``
average pooling, per-image min–max); layer attributions (``Layer*``, which need a ``layer``
setting naming a module of the classifier, e.g. ``layer=body``, its last feature map) CAM-like
maps at the layer's resolution (the sum over channels, a ReLU unless ``relu=false``, min–max).
Their maps are not differentiable (``differentiable = False``): PGD and detection use them, and
they explain images attacked through other interpreters; ADV² refuses them and names the
built-in to attack instead (:data:`EQUIVALENTS`).

Settings: the adapter's (``pool``; ``layer`` and ``relu`` for layer attributions; ``base``,
the attribution ``NoiseTunnel`` wraps; ``seed`` for the random ones) and the keywords of
Captum's constructor and ``attribute``, with :data:`DEFAULTS` over Captum's. The random
attributions (:data:`STOCHASTIC`) draw each image's samples from its own seed
(:meth:`~adv2.interpreters.Interpreter.use_seeds`), one image at a time. Captum is optional:
``pip install captum``.

Examples:
    >>> ig = build_interpreter("captum:IntegratedGradients", model, n_steps=32)  # doctest: +SKIP
    >>> logits, maps = ig.explain(x, classes)                  # N×1×H/4×W/4 in [0,1]
"""

from __future__ import annotations

import functools
import inspect
import math
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import torch

from adv2.interpreters.base import Interpreter, minmax
from adv2.interpreters.grad import gradient_map
from adv2.models import Classifier

#: the adapter's defaults over Captum's, per attribution: IG in batches of 64 points, the
#: occlusion windows of Zeiler & Fergus's size (16 px, stride 8; Captum has none), and
#: SmoothGrad's noise (σ 0.15 of the [0,1] range, 10 samples; Captum's σ is 1)
DEFAULTS: dict[str, dict[str, Any]] = {
    "IntegratedGradients": {"internal_batch_size": 64},
    "LayerIntegratedGradients": {"internal_batch_size": 64},
    "Occlusion": {"sliding_window_shapes": (3, 16, 16), "strides": (3, 8, 8),
                  "perturbations_per_eval": 16},
    "NoiseTunnel": {"nt_samples": 10, "stdevs": 0.15},
}
#: the differentiable built-in interpreter ADV² attacks instead of a Captum attribution
EQUIVALENTS = {"IntegratedGradients": "ig", "NoiseTunnel": "smoothgrad", "Saliency": "grad",
               "LayerGradCam": "gradcam"}
#: the attributions that draw random samples (noise, baselines, coalitions, permutations)
STOCHASTIC = frozenset({"NoiseTunnel", "GradientShap", "LayerGradientShap", "NeuronGradientShap",
                        "Lime", "KernelShap", "ShapleyValueSampling"})
#: ``attribute``'s arguments the adapter passes itself
_PASSED = ("self", "inputs", "target")
#: the adapter's own settings (never passed to Captum)
_OWN = ("pool", "relu", "base", "seed")


def captum_attr(spec: str) -> ModuleType:
    """``captum.attr``, or a ValueError saying how to install Captum."""
    try:
        import captum.attr
    except ImportError:
        raise ValueError(f"interpreter {spec!r} needs Captum, which is not installed: pip "
                         "install captum (or pip install 'adv2[captum]')") from None
    return captum.attr


def captum_class(spec: str, method: str) -> type:
    """The attribution class ``captum.attr.<method>``; ValueError naming ``spec`` if none."""
    attr = captum_attr(spec)
    cls = getattr(attr, method, None)
    if not (isinstance(cls, type) and issubclass(cls, attr.Attribution)
            and callable(getattr(cls, "attribute", None))):
        raise ValueError(f"interpreter {spec!r}: captum.attr has no attribution class "
                         f"{method!r} (e.g. IntegratedGradients, Saliency, Occlusion, "
                         "LayerGradCam)")
    return cls


class CaptumAttribution(Interpreter):
    """A Captum attribution as a (non-differentiable) interpreter; :func:`attribution` makes
    the subclass of each attribution, whose signature lists its settings.

    Arguments:
        model: the classifier. settings: see the module docstring (``inspect.signature`` of
            the subclass lists them with their defaults).

    Shape:
        x: N×3×H×W in [0,1]; classes: (N,) long; maps: N×1×(H/pool)×(W/pool), or the layer's
        h×w for layer attributions.
    """

    differentiable = False
    #: the Captum attribution's name (``IntegratedGradients``)
    method: ClassVar[str]
    #: the settings that go to Captum's constructor (the others go to ``attribute``, but for
    #: the adapter's own)
    constructor_keys: ClassVar[tuple[str, ...]]
    #: the attribution's output is a layer's (``Layer*``): CAM-like maps
    layered: ClassVar[bool]
    #: Captum's ``attribute`` takes a ``target`` (the classes explained; NoiseTunnel passes
    #: it on to its base)
    takes_target: ClassVar[bool]

    def __init__(self, model: Classifier, **settings: Any) -> None:
        super().__init__(model)
        bound = type(self).__signature__.bind(model, **settings)  # TypeError: a bad setting
        bound.apply_defaults()
        values = {k: v for k, v in bound.arguments.items() if k not in ("model", "extra")}
        values |= bound.arguments.get("extra", {})
        #: every setting, lists as tuples (Captum wants tuple shapes)
        self.settings = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        self.pool, self.relu = self.settings.get("pool"), self.settings.get("relu")
        self.seed = self.settings.get("seed", 0)  # every image's seed until use_seeds
        ctor = {k: self.settings[k] for k in self.constructor_keys}
        self.layer = None  # the module a layer attribution looks at
        if "layer" in ctor:
            self.layer = ctor["layer"] = self._module(ctor["layer"])
        first = (captum_class(self.name, self.settings["base"])(model)
                 if self.method == "NoiseTunnel" else model)
        self.attribution = captum_class(self.name, self.method)(first, **ctor)
        self.attribute_kwargs = {k: v for k, v in self.settings.items()
                                 if k not in _OWN and k not in ctor}
        # forward passes of one explain: Captum's sample counts (NoiseTunnel's × its base's)
        self.explain_passes = math.prod(int(self.settings.get(k, 1))
                                        for k in ("n_steps", "nt_samples", "n_samples"))

    def _module(self, layer: str) -> torch.nn.Module:
        modules = dict(self.model.named_modules())
        if not layer or layer not in modules:
            raise ValueError(f"{self.name}: layer {layer!r} is not a module of the classifier "
                             f"(e.g. {', '.join(list(modules)[1:6])})")
        return modules[layer]

    def resolution(self, height: int, width: int) -> tuple[int, int]:
        if not self.layered:
            return height // self.pool, width // self.pool
        shapes = []
        to_input = self.settings.get("attribute_to_layer_input", False)
        handle = self.layer.register_forward_hook(
            lambda module, inputs, output: shapes.append((inputs[0] if to_input
                                                          else output).shape[-2:]))
        try:
            with torch.no_grad():
                self.model(torch.zeros(1, 3, height, width, device=self.model.device))
        finally:
            handle.remove()
        return tuple(shapes[0])

    def explain(self, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.explain_rows(x, classes, None)

    def explain_rows(self, x: torch.Tensor, classes: torch.Tensor,
                     rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        if self.stochastic:  # each image's draws from its seed
            a = torch.cat([self._attribute(x[j:j + 1], classes[j:j + 1], seed)
                           for j, seed in enumerate(self.image_seeds(len(x), rows))])
        else:
            a = self._attribute(x, classes, None)
        if not self.layered:
            return logits, gradient_map(a, self.pool)
        if a.dim() != 4:
            raise ValueError(f"{self.name}: layer {self.settings['layer']!r} gives attributions "
                             f"of shape {tuple(a.shape)}, not an N×C×h×w map")
        maps = a.sum(dim=1, keepdim=True)
        return logits, minmax(maps.clamp_min(0) if self.relu else maps)

    def _attribute(self, x: torch.Tensor, classes: torch.Tensor,
                   seed: int | None) -> torch.Tensor:
        """Captum's attribution of x (detached: Captum's own gradients, never of the attack's
        graph), its random draws (torch's and numpy's global generators) from ``seed``; the
        caller's state of those generators (on the host and x's device) is left as it was."""
        kwargs = self.attribute_kwargs | ({"target": classes} if self.takes_target else {})
        devices = [x.device] if x.device.type == "cuda" else []
        state = np.random.get_state()
        try:
            with torch.enable_grad(), torch.random.fork_rng(devices):
                if seed is not None:
                    torch.manual_seed(seed)
                    np.random.seed(seed % 2**32)
                return self.attribution.attribute(x.detach().requires_grad_(), **kwargs).detach()
        finally:
            np.random.set_state(state)

    def config(self) -> dict:
        return {"name": self.name, **self.settings}


@functools.cache
def attribution(method: str) -> type[CaptumAttribution]:
    """The interpreter class of ``captum.attr.<method>`` (one per name), named
    ``captum:<method>``; ValueError without Captum or without such an attribution."""
    spec = f"captum:{method}"
    cls = captum_class(spec, method)
    keyword = inspect.Parameter.KEYWORD_ONLY
    layered = method.startswith("Layer")
    own = {"relu": True} if layered else {"pool": 4}
    if method == "NoiseTunnel":
        own["base"] = "Saliency"
    if method in STOCHASTIC:
        own["seed"] = 0
    ctor = [p for p in list(inspect.signature(cls.__init__).parameters.values())[2:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, keyword)]
    attribute = list(inspect.signature(cls.attribute).parameters.values())
    defaults = DEFAULTS.get(method, {})
    parameters = [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [inspect.Parameter(k, keyword, default=v) for k, v in own.items()]
    parameters += [inspect.Parameter(p.name, keyword, default=defaults.get(p.name, p.default))
                   for p in ctor + attribute
                   if p.name not in _PASSED and p.kind in (p.POSITIONAL_OR_KEYWORD, keyword)]
    if any(p.kind is p.VAR_KEYWORD for p in attribute):  # NoiseTunnel: its base's keywords
        parameters.append(inspect.Parameter("extra", inspect.Parameter.VAR_KEYWORD))
    return type(f"Captum{method}", (CaptumAttribution,), {
        "__module__": __name__, "__signature__": inspect.Signature(parameters), "name": spec,
        "method": method, "constructor_keys": tuple(p.name for p in ctor), "layered": layered,
        "takes_target": any(p.name == "target" or p.kind is p.VAR_KEYWORD for p in attribute),
        "stochastic": method in STOCHASTIC})
