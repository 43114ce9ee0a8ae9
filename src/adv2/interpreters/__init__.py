"""Interpreters: one interface (:class:`Interpreter`); GRAD, CAM, MASK and RTS (the paper's),
Integrated Gradients, SmoothGrad and Grad-CAM."""

from adv2.interpreters.base import Interpreter, Verification, minmax
from adv2.interpreters.cam import CAM
from adv2.interpreters.grad import GRAD, SmoothReLU
from adv2.interpreters.gradcam import GradCAM
from adv2.interpreters.ig import IG
from adv2.interpreters.mask import MASK
from adv2.interpreters.mask import STRATEGIES as MASK_STRATEGIES
from adv2.interpreters.rts import RTS
from adv2.interpreters.smoothgrad import SmoothGrad
from adv2.models import Classifier

INTERPRETERS = {"cam": CAM, "grad": GRAD, "mask": MASK, "rts": RTS, "ig": IG,
                "smoothgrad": SmoothGrad, "gradcam": GradCAM}


def build_interpreter(name: str, model: Classifier, **options) -> Interpreter:
    """Instantiate an interpreter by name (``cam``, ``grad``, ``mask`` or ``rts``) with its
    defaults overridden by ``options`` (keyword arguments of its class, e.g. RTS's
    ``checkpoint`` or MASK's ``strategy``)."""
    if name not in INTERPRETERS:
        raise ValueError(f"unknown interpreter {name!r}; choose from {sorted(INTERPRETERS)}")
    try:
        return INTERPRETERS[name](model, **options)
    except TypeError as exc:  # an unknown keyword
        raise ValueError(f"interpreter {name!r}: {exc}") from exc


__all__ = ["CAM", "GRAD", "IG", "INTERPRETERS", "MASK", "MASK_STRATEGIES", "RTS", "GradCAM",
           "Interpreter", "SmoothGrad", "SmoothReLU", "Verification", "build_interpreter", "minmax"]
