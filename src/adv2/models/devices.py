"""Devices: where a module is, a checked device name, a device's name for reports."""

from __future__ import annotations

import torch
from torch import nn

from adv2.models.errors import ModelError


def device_of(module: nn.Module | None) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for an empty module or
    none."""
    for tensor in (*module.parameters(), *module.buffers()) if module is not None else ():
        return tensor.device
    return torch.device("cpu")


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device; ModelError when it is malformed or absent here."""
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"device {str(device)!r}: {exc}") from None
    if found.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {str(device)!r}: no CUDA device is available")
    return found


def describe_device(device: str | torch.device) -> str:
    """A device for reports: "CPU", or a CUDA device's name."""
    found = torch.device(device)
    if found.type == "cuda":
        return torch.cuda.get_device_name(found)
    return found.type.upper()
