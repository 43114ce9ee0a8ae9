"""Support-shaped perturbations: δ = 0 outside a hard support and |δ| ≤ ε·S inside, on the
uint8 image, for every attack and stage; AdvEdge's edges on a hand-made image; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_images, make_tiny_model
from PIL import Image
from skimage import filters

from adv2 import cli
from adv2.attacks import ADV2, PGD, AdaptiveADV2
from adv2.attacks import support as supports
from adv2.attacks.adaptive import ADAPTIVE_DEFAULTS
from adv2.attacks.pgd import PGD_DEFAULTS
from adv2.attacks.settings import AttackSettings
from adv2.data import to_tensor
from adv2.detection import FeatureSqueezingDetector
from adv2.interpreters import CAM

EPS = 16 / 255


def _setup(n: int = 4):
    model = make_tiny_model(0)
    images = make_images(n, seed=2)
    x = to_tensor(images)
    targets = (model(x).argmax(dim=1) + 1) % 10
    return model, images, targets


def _half(n: int, size: int = 32, soft: bool = False) -> torch.Tensor:
    """Left half free (1, or a ramp from 1 to 0.3 when ``soft``), right half fixed (0)."""
    s = torch.zeros(n, 1, size, size)
    s[..., : size // 2] = torch.linspace(1.0, 0.3, size // 2) if soft else 1.0
    return s


def _attacks(model):
    cam = CAM(model)
    adv2 = ADV2(model, cam, eps=EPS, steps=6, warm_steps=6, patience=None)
    detector = FeatureSqueezingDetector(model, ["bit-4"]).fit(make_images(8, seed=9), 0.2)
    return {"pgd": PGD(model, cam, eps=EPS, steps=8, random_start=True, seed=1),
            "adv2": adv2, "adaptive": AdaptiveADV2(adv2, detector, steps=6)}


@pytest.mark.parametrize("name", ["pgd", "adv2", "adaptive"])
@pytest.mark.parametrize("soft", [False, True])
def test_the_perturbation_stays_in_its_support(name, soft) -> None:
    model, images, targets = _setup()
    support = _half(len(images), soft=soft)
    result = _attacks(model)[name](images, targets, None, support)
    delta = result.adv.astype(int) - images.astype(int)  # N×H×W×3, uint8 units
    bound = np.floor(EPS * 255 * support[:, 0].numpy() + 1e-6)[..., None]
    assert (np.abs(delta) <= bound).all()
    assert (delta[:, :, 16:] == 0).all()  # nothing changes outside the support
    assert (np.abs(delta[:, :, :16]) > 0).any()  # the attack did use the support
    again = _attacks(model)[name](images, targets, None, support)
    assert np.array_equal(again.adv, result.adv)  # deterministic


def test_edges_of_a_square_are_its_outline() -> None:
    image = torch.zeros(1, 3, 32, 32)
    image[..., 10:22, 10:22] = 1.0
    magnitude = supports.sobel_magnitude(image)[0, 0].numpy()
    expected = filters.sobel(image[0].mean(dim=0).numpy())
    np.testing.assert_allclose(magnitude, expected, atol=1e-6)  # as scikit-image's sobel
    mask = supports.edges(image, threshold=0.1, dilation=0)[0, 0].numpy().astype(bool)
    ring = np.zeros((32, 32), dtype=bool)
    ring[9:23, 9:23] = True
    ring[11:21, 11:21] = False
    assert np.array_equal(mask, ring)  # the outline, two pixels wide; inside and out are free
    dilated = supports.edges(image, dilation=1)[0, 0].numpy().astype(bool)
    assert dilated[8, 8] and dilated[11, 11] and not mask[11, 11]  # one pixel wider each way
    assert not dilated[12, 12] and not dilated[7, 7]


def test_target_map_support_is_its_top_cells_upsampled() -> None:
    maps = torch.arange(16.0).view(1, 1, 4, 4) / 15
    support = supports.target_map(maps, (8, 8), q=0.25)
    assert support.shape == (1, 1, 8, 8) and support.mean() == 0.25
    assert support[0, 0, 6:, 4:].all() and not support[0, 0, :6].any()
    soft = supports.target_map(maps, (32, 32), q=0.25, sigma=2.0)[0, 0]
    assert 0 <= soft.min() and soft.max() <= 1
    assert soft[31, 31] > 0.99 and soft[0, 0] == 0  # inside stays free, far outside stays fixed
    assert 0 < soft[23, 20] < 1  # the border fades


def test_support_names_are_parsed_and_bad_ones_named(tmp_path) -> None:
    assert supports.parse("full") == ("full", ())
    assert supports.parse("edges:0.2") == ("edges", (0.2,))
    assert supports.parse("target-map") == ("target-map", ())
    assert supports.parse("target-map:0.4:3") == ("target-map", (0.4, 3.0))
    mask = tmp_path / "mask.png"
    Image.new("L", (8, 8), 255).save(mask)
    assert supports.parse(str(mask)) == ("file", ())
    for bad in ("edge", "edges:x", "target-map:0", "full:1", "edges:2", "edges:0.1:2",
                "target-map:0.5:-1", "target-map:0.5:nan", "target-map:0.5:1:1"):
        with pytest.raises(ValueError):
            supports.parse(bad)


def test_cli_support_is_recorded_drawn_and_bad_ones_refused(tmp_path, monkeypatch,
                                                             caplog) -> None:
    monkeypatch.setattr(cli.attack, "load_model", lambda *args: make_tiny_model(0, 1000))
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for name, picture in zip(["a.png", "sub/b.png"], make_images(2, seed=3, size=128)):
        Image.fromarray(picture).save(images / name)
    masks = tmp_path / "masks"
    (masks / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png"):
        mask = np.zeros((128, 128), dtype=np.uint8)
        mask[:, :64] = 255
        Image.fromarray(mask).save(masks / name)
    common = ["attack", "--images", str(images), "--interpreter", "cam", "--attack", "adv2",
              "--steps", "3", "--warm-steps", "3"]
    for support, out in (("edges", "e"), (str(masks), "f")):
        assert cli.main([*common, "--support", support, "--out", str(tmp_path / out)]) == 0
        config = json.loads((tmp_path / out / "config.json").read_text())
        assert config["support"] == support
        for name in ("a.png", "sub/b.png"):
            folder = tmp_path / out / "samples" / name
            drawn = np.load(folder / "support.npy")
            adv = np.asarray(Image.open(folder / "adv.png")).astype(int)
            clean = np.asarray(Image.open(folder / "clean.png")).astype(int)
            assert (np.abs(adv - clean).max(axis=2)[drawn == 0] == 0).all()
    assert cli.main([*common, "--support", "edgy", "--out", str(tmp_path / "bad")]) == 2
    assert "--support" in caplog.text and not (tmp_path / "bad").exists()


def test_a_support_takes_the_interpreters_support_defaults(monkeypatch) -> None:
    monkeypatch.setattr(CAM, "support_attack_defaults", {"steps": 123, "lam": "7"})
    full = AttackSettings().resolved(CAM)
    assert (full.steps, full.lam) == (CAM.attack_defaults["steps"], CAM.attack_defaults["lam"])
    for text in ("edges", "edges:0.2", "target-map:0.3"):
        confined = AttackSettings(support=text).resolved(CAM)
        assert (confined.steps, confined.lam) == (123, "7")
        assert confined.lr == CAM.attack_defaults["lr"]  # the rest as with full support
    assert AttackSettings(support="edges", steps=5).resolved(CAM).steps == 5  # users win
    adaptive = AttackSettings(support="edges", adaptive="fitted.json").resolved(CAM)
    assert (adaptive.steps, adaptive.lam) == (ADAPTIVE_DEFAULTS["steps"], "7")
    pgd = AttackSettings(attack="pgd", support="edges").resolved(CAM)
    assert pgd.steps == PGD_DEFAULTS["steps"]
