"""adv2: attack and audit interpretable deep learning systems (classifier + interpreter)."""

__version__ = "0.1.0"
