"""Interpreters: one interface (:class:`Interpreter`), GRAD, CAM and MASK."""

from adv2.interpreters.base import Interpreter, minmax
from adv2.interpreters.cam import CAM
from adv2.interpreters.grad import GRAD, SmoothReLU
from adv2.interpreters.mask import MASK
from adv2.models import Classifier

INTERPRETERS = {"cam": CAM, "grad": GRAD, "mask": MASK}


def build_interpreter(name: str, model: Classifier) -> Interpreter:
    """Instantiate an interpreter by name (``cam``, ``grad`` or ``mask``) with its defaults."""
    if name not in INTERPRETERS:
        raise ValueError(f"unknown interpreter {name!r}; choose from {sorted(INTERPRETERS)}")
    return INTERPRETERS[name](model)


__all__ = ["CAM", "GRAD", "MASK", "INTERPRETERS", "Interpreter", "SmoothReLU", "build_interpreter",
           "minmax"]
