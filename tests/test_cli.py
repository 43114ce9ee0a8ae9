"""The command line end to end on a few generated images (with the embedded EfficientNet-Lite0)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adv2 import cli
from adv2.data import load_image
from adv2.errors import SettingError
from adv2.output import FIELDS

STEMS = ["img_a", "img_b", "img_c"]
NAMES = [f"{stem}.png" for stem in STEMS]  # a sample's name is its path in the folder
SAMPLE_FILES = ["clean.png", "adv.png", "benign_map.npy", "adv_map.npy", "target_map.npy",
                "figure.png"]
SUMMARY_KEYS = {"model", "interpreter", "attack", "n_images", "clean_accuracy", "success_rate",
                "mean_confidence", "l1_mean", "iou_mean", "iou_per_k", "passes_per_image", "eps",
                "seed", "seconds", "errors", "ignored", "warnings", "changed_mean", "l2_mean",
                "queries_mean", "queries_median", "per_interpreter"}


def _make_images(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:80, 0:96]
    for i, name in enumerate(STEMS):
        img = np.zeros((80, 96, 3), dtype=np.uint8)
        img[..., i] = (xx * 255 / 95).astype(np.uint8)
        img[..., (i + 1) % 3] = (yy * 255 / 79).astype(np.uint8)
        img[20 + 10 * i:50 + 10 * i, 30:60] = rng.integers(0, 256, 3)
        Image.fromarray(img).save(folder / f"{name}.png")
    (folder / "bad.jpg").write_bytes(rng.bytes(3000))
    return folder


def _attack(images: Path, out: Path, *extra: str) -> int:
    return cli.main(["attack", "--images", str(images), "--out", str(out), "--interpreter", "cam",
                     "--limit", "3", "--seed", "0", *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    images = _make_images(root / "images")
    codes = {
        "pgd": _attack(images, root / "pgd", "--attack", "pgd", "--steps", "3"),
        "adv2": _attack(images, root / "adv2", "--attack", "adv2", "--steps", "3",
                        "--warm-steps", "2"),
        "adv2_again": _attack(images, root / "adv2_again", "--attack", "adv2", "--steps", "3",
                              "--warm-steps", "2"),
    }
    return images, root, codes


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("run", ["pgd", "adv2"])
def test_outputs_exist_and_are_consistent(runs, run) -> None:
    images, root, codes = runs
    out = root / run
    assert codes[run] == 0

    config = json.loads((out / "config.json").read_text())
    assert config["attack"] == run and config["interpreter"] == "cam"
    assert config["steps"] == 3 and config["seed"] == 0
    assert config["attack_config"]["attack"] == run and config["attack_config"]["steps"] == 3
    assert config["model"] == "efficientnet_lite0"
    assert "versions" in config and "torch" in config["versions"]

    header = (out / "results.csv").read_text().splitlines()[0]
    assert header == ("file,label,clean_pred,target,pred,confidence,success,l1,iou,changed,l2,"
                      "queries,iou_cam,l1_cam")
    assert header.split(",") == FIELDS + ["iou_cam", "l1_cam"]
    rows = _rows(out)
    assert [r["file"] for r in rows] == NAMES
    for r in rows:
        assert int(r["target"]) != int(r["label"])
        assert 0 <= float(r["confidence"]) <= 1
        assert int(r["success"]) == int(int(r["pred"]) == int(r["target"]))
        assert 0 <= float(r["l1"]) <= 1 and 0 <= float(r["iou"]) <= 1
        assert (r["iou_cam"], r["l1_cam"]) == (r["iou"], r["l1"])  # the one interpreter's

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS
    assert summary["n_images"] == 3
    assert summary["model"] == "efficientnet_lite0" and summary["attack"] == run
    # results.csv holds 6 decimals: its mean is within half a unit of the last one
    assert summary["l1_mean"] == pytest.approx(np.mean([float(r["l1"]) for r in rows]), abs=5e-7)
    assert summary["success_rate"] == pytest.approx(np.mean([int(r["success"]) for r in rows]))
    assert set(summary["iou_per_k"]) == {"0.1", "0.2", "0.3", "0.4", "0.5"}
    assert summary["passes_per_image"] > 0

    for r in rows:
        folder = out / "samples" / r["file"]
        for name in SAMPLE_FILES:
            assert (folder / name).is_file(), f"{folder / name} is missing"
        clean = np.asarray(Image.open(folder / "clean.png"))
        adv = np.asarray(Image.open(folder / "adv.png"))
        assert clean.shape == adv.shape == (224, 224, 3) and adv.dtype == np.uint8
        assert np.array_equal(clean, load_image(images / r["file"]))
        linf = np.abs(adv.astype(int) - clean.astype(int)).max()
        assert 0 < linf <= 8  # default eps 8/255
        benign = np.load(folder / "benign_map.npy")
        adv_map = np.load(folder / "adv_map.npy")
        target = np.load(folder / "target_map.npy")
        assert benign.shape == adv_map.shape == target.shape == (7, 7)
        assert np.array_equal(target, benign)  # --target-map benign (the default)
        assert float(r["l1"]) == pytest.approx(np.abs(adv_map - target).mean(), abs=2e-6)


@pytest.mark.parametrize("run", ["pgd", "adv2"])
def test_corrupt_file_is_recorded_and_others_processed(runs, run) -> None:
    _, root, _ = runs
    summary = json.loads((root / run / "summary.json").read_text())
    assert len(summary["errors"]) == 1
    assert Path(summary["errors"][0]["file"]).name == "bad.jpg"
    assert summary["errors"][0]["error"]
    assert sorted(p.name for p in (root / run / "samples").iterdir()) == NAMES


def test_same_seed_gives_identical_outputs(runs) -> None:
    _, root, codes = runs
    a, b = root / "adv2", root / "adv2_again"
    assert codes["adv2_again"] == 0
    assert (a / "results.csv").read_bytes() == (b / "results.csv").read_bytes()
    for name in NAMES:
        assert (a / "samples" / name / "adv.png").read_bytes() == (
            b / "samples" / name / "adv.png").read_bytes()
        assert np.array_equal(np.load(a / "samples" / name / "adv_map.npy"),
                              np.load(b / "samples" / name / "adv_map.npy"))


def test_adv2_and_pgd_attack_the_same_targets(runs) -> None:
    _, root, _ = runs
    pgd, adv2 = _rows(root / "pgd"), _rows(root / "adv2")
    assert [(r["label"], r["target"]) for r in pgd] == [(r["label"], r["target"]) for r in adv2]


# ------------------------------------------------------------------------------ exit codes


@pytest.mark.parametrize("device", ["cuda", "nonsense"])
def test_unavailable_device_exits_2(tmp_path, caplog, device) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    images = _make_images(tmp_path / "images")
    assert cli.main(["attack", "--images", str(images), "--out", str(tmp_path / "o"),
                     "--device", device]) == 2
    assert not (tmp_path / "o").exists()
    assert f"'{device}'" in caplog.text and "device" in caplog.text


def test_model_errors_exit_2(tmp_path) -> None:
    images = _make_images(tmp_path / "images")
    assert cli.main(["attack", "--images", str(images), "--out", str(tmp_path / "o"),
                     "--model", "resnet18"]) == 2  # a torchvision model needs --weights
    assert not (tmp_path / "o").exists()


def test_missing_images_and_only_corrupt_files(tmp_path, monkeypatch) -> None:
    from conftest import make_tiny_model

    # the exit codes do not depend on the model: a tiny one keeps this fast
    monkeypatch.setattr(cli.attack, "load_model", lambda *args: make_tiny_model(0, 1000))
    assert cli.main(["attack", "--images", str(tmp_path / "absent"),
                     "--out", str(tmp_path / "o1")]) == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"\x00garbage")
    assert cli.main(["attack", "--images", str(bad), "--out", str(tmp_path / "o2")]) == 1
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary["n_images"] == 0
    assert [Path(e["file"]).name for e in summary["errors"]] == ["x.jpg"]


def test_parser_rejects_unknown_choices(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["attack", "--images", "x", "--out", "y", "--interpreter", "lime"])
    with pytest.raises(SystemExit):
        cli.main(["attack", "--images", "x", "--out", "y", "--target-map", "zebra"])


def test_mask_strategy_and_interpreter_settings(tmp_path, monkeypatch, caplog) -> None:
    """--mask-strategy and --interpreter-setting reach the interpreter and config.json; an
    unknown setting exits 2 naming it."""
    from conftest import make_tiny_model

    monkeypatch.setattr(cli.attack, "load_model", lambda *args: make_tiny_model(0, 1000))
    images = _make_images(tmp_path / "images")
    common = ["attack", "--images", str(images), "--interpreter", "mask", "--limit", "1",
              "--steps", "2", "--warm-steps", "1", "--mask-strategy", "alt"]
    assert cli.main([*common, "--out", str(tmp_path / "o"), "--interpreter-setting",
                     "iterations=3", "--interpreter-setting", "lr=0.05"]) == 0
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["interpreter_config"]["strategy"] == "alt"
    assert config["interpreter_config"]["iterations"] == 3
    assert config["interpreter_config"]["lr"] == 0.05
    assert cli.main([*common, "--out", str(tmp_path / "o2"), "--interpreter-setting",
                     "itrations=3"]) == 2
    assert "itrations" in caplog.text
    assert cli.main([*common, "--out", str(tmp_path / "o3"), "--interpreter-setting",
                     "iterations"]) == 2
    assert "KEY=VALUE" in caplog.text
    cam = [a if a != "mask" else "cam" for a in common]
    assert cli.main([*cam, "--out", str(tmp_path / "o4")]) == 2
    assert "--mask-strategy applies to --interpreter mask" in caplog.text


def test_interpreter_settings_read_booleans_and_none_in_any_case() -> None:
    from adv2.key_value import parse_setting
    assert parse_setting("attack_exact=False") == ("attack_exact", False)
    assert parse_setting("relu=true") == ("relu", True)
    assert parse_setting("internal_batch_size=None") == ("internal_batch_size", None)
    assert parse_setting("steps=50") == ("steps", 50)
    assert parse_setting("layer=body.inner.blocks.4") == ("layer", "body.inner.blocks.4")


def test_black_box_attack_counts_queries_and_refuses_what_cannot_work(tmp_path, caplog) -> None:
    images = _make_images(tmp_path / "images")
    out = tmp_path / "bb"
    assert _attack(images, out, "--threat", "black-box", "--attack", "adv2",
                   "--queries", "12") == 0
    rows = _rows(out)
    assert len(rows) == 3 and all(1 <= int(r["queries"]) <= 12 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["queries_median"] == float(np.median([int(r["queries"]) for r in rows]))
    assert json.loads((out / "config.json").read_text())["attack_config"]["queries"] == 12
    assert json.loads((out / "config.json").read_text())["attack_config"]["placement"] \
        == "uniform"
    guided = tmp_path / "guided"
    assert _attack(images, guided, "--threat", "black-box", "--attack", "adv2",
                   "--queries", "12", "--placement", "map") == 0
    assert json.loads((guided / "config.json").read_text())["attack_config"]["placement"] \
        == "map"
    from adv2.attack_config import check_setting
    with pytest.raises(SettingError, match="unknown value 'edges'") as info:
        check_setting("placement", "edges")
    assert info.value.key == "placement"
    caplog.clear()
    assert _attack(images, tmp_path / "o1", "--threat", "black-box", "--answers", "label") == 2
    assert "--answers" in caplog.text and "needs the scores" in caplog.text
    assert _attack(images, tmp_path / "o2", "--threat", "black-box",
                   "--surrogate", "efficientnet_lite0") == 2
    assert "--surrogate" in caplog.text and "attacked model itself" in caplog.text
    assert _attack(images, tmp_path / "o3", "--threat", "black-box", "--adaptive", "t.json") == 2
    assert "--adaptive" in caplog.text


def test_a_label_edited_in_place_makes_that_images_record_stale(tmp_path, monkeypatch) -> None:
    """A rerun into the same --out reuses the records of unchanged images only: an image
    whose label changed (a labels file edited in place) is attacked again, with its new
    label and target, and no row mixes the two."""
    from adv2 import batch
    from conftest import make_tiny_model

    monkeypatch.setattr(cli.attack, "load_model", lambda *args: make_tiny_model(0, 1000))
    images = _make_images(tmp_path / "images")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nimg_a.png,1\nimg_b.png,2\nimg_c.png,3\n")
    out = tmp_path / "out"
    options = ("--attack", "pgd", "--steps", "2", "--labels", str(labels), "--batch-size", "1")
    assert _attack(images, out, *options) == 0
    before = {r["file"]: r for r in _rows(out)}
    labels.write_text("path,label\nimg_a.png,1\nimg_b.png,5\nimg_c.png,3\n")
    attacked: list[str] = []
    real = batch.attack_batch

    def spy(*args, **kwargs):
        attacked.extend(args[7])
        return real(*args, **kwargs)
    monkeypatch.setattr(cli.attack.pipeline, "attack_batch", spy)
    assert _attack(images, out, *options) == 0
    after = {r["file"]: r for r in _rows(out)}
    assert attacked == ["img_b.png"]
    assert after["img_b.png"]["label"] == "5" and after["img_a.png"] == before["img_a.png"]


def test_a_black_box_image_searches_the_same_alone_or_in_a_batch(runs, tmp_path) -> None:
    """Each image draws its squares from its own seed: alone or three to a batch, the same
    images (a short search, where the last-bit float differences of a batched forward pass
    decide nothing)."""
    images = runs[0]
    rows = {}
    for size in ("1", "3"):
        assert _attack(images, tmp_path / size, "--threat", "black-box", "--attack", "adv2",
                       "--queries", "12", "--batch-size", size) == 0
        rows[size] = _rows(tmp_path / size)
        assert {r["queries"] for r in rows[size]} - {""}
    assert rows["1"] == rows["3"]
    for name in NAMES:
        alone, batched = (np.asarray(Image.open(tmp_path / size / "samples" / name / "adv.png"))
                          for size in ("1", "3"))
        assert np.array_equal(alone, batched)
