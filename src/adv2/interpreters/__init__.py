"""Interpreters: one interface (:class:`Interpreter`); GRAD, CAM, MASK and RTS (the paper's),
Integrated Gradients, SmoothGrad and Grad-CAM."""

from adv2.interpreters.base import Interpreter, Verification, minmax
from adv2.interpreters.cam import CAM
from adv2.interpreters.grad import GRAD, SmoothReLU
from adv2.interpreters.gradcam import GradCAM
from adv2.interpreters.ig import IG
from adv2.interpreters.mask import MASK
from adv2.interpreters.mask import STRATEGIES as MASK_STRATEGIES
from adv2.interpreters.joint import joint_class
from adv2.interpreters.plugins import COMPOSITIONS, build_interpreter
from adv2.interpreters.rts import RTS
from adv2.interpreters.smoothgrad import SmoothGrad

INTERPRETERS = {"cam": CAM, "grad": GRAD, "mask": MASK, "rts": RTS, "ig": IG,
                "smoothgrad": SmoothGrad, "gradcam": GradCAM}


COMPOSITIONS["+"] = joint_class

__all__ = ["CAM", "GRAD", "IG", "INTERPRETERS", "MASK", "MASK_STRATEGIES", "RTS", "GradCAM",
           "Interpreter", "SmoothGrad", "SmoothReLU", "Verification", "build_interpreter", "minmax"]
