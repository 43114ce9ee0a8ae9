"""Interpreters: one interface (:class:`Interpreter`); GRAD, CAM, MASK and RTS (the paper's),
Integrated Gradients, SmoothGrad and Grad-CAM."""

from adv2.interpreters.base import Interpreter, Verification, minmax
from adv2.interpreters.cam import CAM
from adv2.interpreters.grad import GRAD, SmoothReLU
from adv2.interpreters.gradcam import GradCAM
from adv2.interpreters.ig import IG
from adv2.interpreters.mask import MASK
from adv2.interpreters.mask import STRATEGIES as MASK_STRATEGIES
from adv2.interpreters.plugins import resolve
from adv2.interpreters.rts import RTS
from adv2.interpreters.smoothgrad import SmoothGrad
from adv2.models import Classifier

INTERPRETERS = {"cam": CAM, "grad": GRAD, "mask": MASK, "rts": RTS, "ig": IG,
                "smoothgrad": SmoothGrad, "gradcam": GradCAM}


def build_interpreter(name: str, model: Classifier, **options) -> Interpreter:
    """Instantiate an interpreter by name (a built-in such as ``cam``, ``package.module:Class``
    or ``captum:<Name>``: :func:`adv2.interpreters.plugins.resolve`) with its defaults
    overridden by ``options`` (keyword arguments of its class, e.g. RTS's ``checkpoint`` or
    MASK's ``strategy``). The interpreter's ``name`` becomes ``name``, which reports and
    records go by."""
    cls = resolve(name)
    try:
        interpreter = cls(model, **options)
    except TypeError as exc:  # an unknown keyword
        raise ValueError(f"interpreter {name!r}: {exc}") from exc
    interpreter.name = name
    return interpreter


__all__ = ["CAM", "GRAD", "IG", "INTERPRETERS", "MASK", "MASK_STRATEGIES", "RTS", "GradCAM",
           "Interpreter", "SmoothGrad", "SmoothReLU", "Verification", "build_interpreter", "minmax"]
