"""Copies of a model with its activations replaced: GRAD's second-order surrogates, and the
rule that keeps a copy on the model's device."""

from __future__ import annotations

import copy
from typing import Callable

from torch import nn

from adv2.models import Classifier


def smooth_copy(model: Classifier, activation: Callable[[nn.Module], nn.Module],
                kinds: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)) -> Classifier:
    """A deep copy of ``model`` with every module ``m`` of ``kinds`` (ReLU/ReLU6 by default)
    replaced by ``activation(m)``.

    Used to build GRAD's second-order surrogates; the original model is untouched.
    """
    twin = copy.deepcopy(model)
    for parent in twin.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, kinds):
                setattr(parent, child_name, activation(child))
    return twin


def follow(twin: nn.Module, model: nn.Module) -> nn.Module:
    """``twin`` on ``model``'s device and dtype: moved there when the model was moved (or
    cast) after the copy was made, so a copy follows the model as every tensor does."""
    theirs, ours = next(model.parameters(), None), next(twin.parameters(), None)
    if theirs is not None and ours is not None and (
            (ours.device, ours.dtype) != (theirs.device, theirs.dtype)):
        twin.to(device=theirs.device, dtype=theirs.dtype)
    return twin
