"""Target maps: benign, other and shape."""

from __future__ import annotations

import pytest
import torch

from adv2 import target_maps
from adv2.data import to_tensor
from adv2.interpreters import CAM, GRAD
from conftest import make_images


@pytest.fixture
def pool(tiny_model):
    """24 images, labelled with the model's own predictions (so all are correctly classified)."""
    x = to_tensor(make_images(24, seed=5))
    with torch.no_grad():
        pred = tiny_model(x).argmax(dim=1)
    return x, pred


def test_kinds() -> None:
    assert set(target_maps.KINDS) == {"benign", "other", "shape"}


@pytest.mark.parametrize("kind", ["cam", "grad"])
def test_benign_is_the_clean_map_of_the_label(kind, tiny_model, images) -> None:
    interp = CAM(tiny_model) if kind == "cam" else GRAD(tiny_model)
    x = to_tensor(images)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    maps = target_maps.benign(interp, x, labels)
    assert maps.shape == (6, 1, 8, 8)
    assert not maps.requires_grad
    assert maps.min() >= 0 and maps.max() <= 1
    torch.testing.assert_close(maps, interp(x, labels).detach())
    # it is the map for the given label, not for the prediction
    assert not torch.allclose(maps, target_maps.benign(interp, x, (labels + 1) % 10))


def test_other_uses_a_correctly_classified_image_of_the_target(tiny_model, pool) -> None:
    x, labels = pool
    interp = CAM(tiny_model)
    counts = torch.bincount(labels, minlength=10)
    classes = [c for c in range(10) if counts[c] >= 2]
    assert classes, "the pool needs a class with several images"
    tgt = torch.tensor(classes)
    maps = target_maps.other(interp, tgt, x, labels, seed=0)
    assert maps.shape == (len(classes), 1, 8, 8)
    assert maps.min() >= 0 and maps.max() <= 1
    # each map is the map, for the target class, of one pool image of that class
    for i, c in enumerate(classes):
        rows = torch.nonzero(labels == c).flatten()
        candidates = interp(x[rows], torch.full((len(rows),), c))
        assert any(torch.allclose(maps[i], m, atol=1e-6) for m in candidates)


def test_other_is_seeded(tiny_model, pool) -> None:
    x, labels = pool
    interp = CAM(tiny_model)
    c = int(torch.bincount(labels, minlength=10).argmax())
    assert int((labels == c).sum()) >= 3
    tgt = torch.full((4,), c)
    a = target_maps.other(interp, tgt, x, labels, seed=11)
    b = target_maps.other(interp, tgt, x, labels, seed=11)
    assert torch.equal(a, b)
    draws = [target_maps.other(interp, tgt, x, labels, seed=s) for s in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


def test_other_ignores_misclassified_images(tiny_model, pool) -> None:
    x, pred = pool
    interp = CAM(tiny_model)
    c = int(pred[0])
    # claim every image is of class c: only those the model predicts as c are eligible
    labels = torch.full_like(pred, c)
    eligible = torch.nonzero(pred == c).flatten()
    expected = interp(x[eligible], torch.full((len(eligible),), c))
    for seed in range(5):
        m = target_maps.other(interp, torch.tensor([c]), x, labels, seed=seed)
        assert any(torch.allclose(m[0], e, atol=1e-6) for e in expected)


def test_other_raises_without_a_correct_image(tiny_model, pool) -> None:
    x, pred = pool
    interp = CAM(tiny_model)
    missing = next(c for c in range(10) if not (pred == c).any())
    with pytest.raises(ValueError, match=f"target class {missing}"):
        target_maps.other(interp, torch.tensor([missing]), x, pred, seed=0)
    # images labelled with the class but predicted as another class do not count
    c = int(pred[0])
    d = (c + 1) % 10
    rows = pred == c
    with pytest.raises(ValueError, match=f"target class {d}"):
        target_maps.other(interp, torch.tensor([d]), x[rows], torch.full((int(rows.sum()),), d),
                      seed=0)


def test_shape_maps_shape_range_and_seed() -> None:
    a = target_maps.shape(6, (8, 8), seed=3, size=32)
    assert a.shape == (6, 1, 8, 8)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, target_maps.shape(6, (8, 8), seed=3, size=32))
    assert not torch.equal(a, target_maps.shape(6, (8, 8), seed=4, size=32))
    # different maps within one call
    assert not torch.equal(a[0], a[1])
    # native resolutions of CAM (7×7) and GRAD (56×56) on 224² inputs
    assert target_maps.shape(2, (7, 7), seed=0).shape == (2, 1, 7, 7)
    assert target_maps.shape(2, (56, 56), seed=0).shape == (2, 1, 56, 56)


def test_shape_inside_and_outside_values() -> None:
    full = target_maps.shape(8, (224, 224), seed=1)
    # at full size every pixel is either inside (U(0.9, 1)) or outside (U(0, 0.1))
    inside = full >= 0.9
    assert ((full <= 0.1) | inside).all()
    assert full.max() <= 1.0 and full.min() >= 0.0
    frac = inside.flatten(1).float().mean(dim=1)
    # a disc or rectangle of radius / half-side 30–60 px on 224²
    assert (frac > (30**2 * 3.14 * 0.9) / 224**2).all() and (frac < (120**2) / 224**2 * 1.1).all()
    # at 56×56 (4×4 px cells) a shape always covers whole cells: an inside region exists
    small = target_maps.shape(8, (56, 56), seed=1)
    flat = small.flatten(1)
    assert ((flat >= 0.9) & (flat <= 1.0)).any(dim=1).all()
    assert (flat <= 0.1).any(dim=1).all()
    # area resizing: a 56×56 cell is the mean of its 4×4 block
    torch.testing.assert_close(small, torch.nn.functional.avg_pool2d(full, 4))
