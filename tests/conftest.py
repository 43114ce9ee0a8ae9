"""Shared fixtures: a tiny seeded CNN classifier, small images, and the shared ImageNet sample."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adv2.data import to_tensor
from adv2.models import Classifier, PoolLinear

# The machine that runs the suite is small and shared: one intra-op thread keeps timings stable
# and the numerics of repeated runs identical.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
#: ``<repo>/../shared/data`` (never a hard-coded absolute path)
SHARED = REPO.parent / "shared" / "data"
IMAGENET_SAMPLE = SHARED / "imagenet-sample"

needs_shared = pytest.mark.skipif(
    not IMAGENET_SAMPLE.is_dir(), reason=f"shared data {IMAGENET_SAMPLE} is absent"
)

N_CLASSES = 10
SIZE = 32


def load_file(relative: str) -> ModuleType:
    """A script of the repository (``benchmarks/...``, ``tools/...``) as a module, loaded from
    its file as ``python <file>`` or mkdocs.yml's ``hooks`` would."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as python registers __main__ (dataclasses look it up)
    spec.loader.exec_module(module)
    return module


def make_tiny_model(seed: int = 0, n_classes: int = N_CLASSES) -> Classifier:
    """A two-conv CNN with a global-pool + linear head: 32×32 input → 8×8 feature map."""
    torch.manual_seed(seed)
    features = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU6(),
    )
    linear = nn.Linear(32, n_classes)
    with torch.no_grad():
        # Zero-mean class weights over channels and a large scale: the prediction depends on the
        # image (not on the mean activation), the model is confident, and targets are reachable.
        linear.weight.mul_(30.0)
        linear.weight.sub_(linear.weight.mean(dim=1, keepdim=True))
        linear.bias.zero_()
    return Classifier(features=features, head=PoolLinear(linear), linear=linear, name="tiny")


def make_images(n: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """Smooth random uint8 N×size×size×3 images (upsampled low-resolution noise plus a little
    pixel noise) with a random colour offset and contrast per image, so that the tiny model
    predicts several different classes."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=gen)
    high = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    high = 0.8 * high + 0.2 * torch.rand(n, 3, size, size, generator=gen)
    offset = 0.5 * torch.rand(n, 3, 1, 1, generator=gen)
    contrast = 0.3 + 0.5 * torch.rand(n, 1, 1, 1, generator=gen)
    x = (offset + contrast * high).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.fixture
def tiny_model() -> Classifier:
    return make_tiny_model(0)


@pytest.fixture
def images() -> np.ndarray:
    return make_images(6, seed=0)


@pytest.fixture
def x(images: np.ndarray) -> torch.Tensor:
    """The ``images`` as float N×3×H×W in [0,1]."""
    return to_tensor(images)


@pytest.fixture
def classes(tiny_model: Classifier, x: torch.Tensor) -> torch.Tensor:
    """The tiny model's predictions for ``x``."""
    with torch.no_grad():
        return tiny_model(x).argmax(dim=1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED
