"""The error of a model name, weights file, device or architecture that adv2 cannot use."""

from __future__ import annotations


class ModelError(ValueError):
    """A model name, weights file or architecture that adv2 cannot use."""
