"""Bad input, built at test time: every case gets a named error, the run goes on with the rest,
nothing already computed is lost, every JSON file is strict, and ``adv2 attack`` resumes."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, make_images, make_tiny_model
from PIL import Image

from adv2 import cli
from adv2.data import image_digest, load_image
from adv2.experiment import load_config, run_experiment
from adv2.models import Classifier
from adv2.records import Store, input_digest

GOOD = ["n01440764_tench.JPEG", "n01440764_tench.png",  # same stem, two files
        "sub/m.JPEG", "sub__m.JPEG",                       # a folder and a look-alike name
        "tiny 1x1.png", "big 9000.png", "naïve café ünï.png"]
BAD = ["corrupt.jpg", "truncated.jpg", "text.png", "bomb.png", "loop.png", "broken.png"]


def _strict(text: str) -> object:
    """Parse JSON, refusing NaN and infinities (which Python's json would accept)."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-strict JSON constant {token}")
    return json.loads(text, parse_constant=refuse)


def _bomb_png(path: Path, side: int = 20000) -> None:
    """A PNG whose header declares side×side pixels (a decompression bomb for Pillow)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (3 * side + 1) * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows)
                     + chunk(b"IEND", b""))


def _corpus(root: Path) -> Path:
    images = root / "corpus"
    (images / "sub").mkdir(parents=True)
    pictures = make_images(len(GOOD), seed=3, size=128)
    for name, picture in zip(GOOD, pictures):
        Image.fromarray(picture).save(images / name)
    Image.fromarray(pictures[4][:1, :1]).save(images / "tiny 1x1.png")
    Image.fromarray(np.repeat(np.repeat(pictures[5], 141, 0), 141, 1)[:9000, :9000]).save(
        images / "big 9000.png", compress_level=1)
    rng = np.random.default_rng(0)
    (images / "corrupt.jpg").write_bytes(rng.bytes(3000))
    whole = root / "whole.jpg"
    Image.fromarray(np.repeat(np.repeat(pictures[0], 4, 0), 4, 1)).save(whole)
    (images / "truncated.jpg").write_bytes(whole.read_bytes()[:300])
    (images / "text.png").write_text("this is not a picture\n")
    _bomb_png(images / "bomb.png")
    os.symlink("loop.png", images / "loop.png")
    os.symlink("nowhere.png", images / "broken.png")
    os.symlink("..", images / "sub" / "again")  # a folder link loop
    (images / "notes.txt").write_text("not an image")
    return images


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return _corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def tiny1000(monkeypatch) -> Classifier:
    model = make_tiny_model(0, 1000)
    monkeypatch.setattr(cli.attack, "load_model", lambda *args: model)
    return model


def _attack(images: Path, out: Path, *extra: str) -> int:
    return cli.main(["attack", "--images", str(images), "--out", str(out), "--interpreter",
                     "cam", "--attack", "pgd", "--steps", "2", "--seed", "0", *extra])


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_attack_names_every_bad_file_and_keeps_every_good_image_once(corpus, tmp_path,
                                                                     tiny1000) -> None:
    out = tmp_path / "out"
    assert _attack(corpus, out, "--batch-size", "3") == 0
    summary = _strict((out / "summary.json").read_text())
    _strict((out / "config.json").read_text())
    errors = {Path(e["file"]).name: e["error"] for e in summary["errors"]}
    assert set(BAD) <= set(errors), errors
    assert "DecompressionBomb" in errors["bomb.png"]
    assert "link" in errors["loop.png"] and "link" in errors["broken.png"]
    assert any(Path(e["file"]).name == "again" for e in summary["errors"])  # the folder loop
    assert [Path(e["file"]).name for e in summary["ignored"]] == ["notes.txt"]
    assert [Path(w["file"]).name for w in summary["warnings"]] == ["tiny 1x1.png"]
    listed = [e["file"] for key in ("errors", "ignored", "warnings") for e in summary[key]]
    assert all(not Path(f).is_absolute() and os.path.lexists(corpus / f) for f in listed), listed
    rows = _rows(out)
    assert sorted(r["file"] for r in rows) == sorted(GOOD)  # each exactly once
    assert summary["n_images"] == len(GOOD)
    for name in GOOD:
        assert (out / "samples" / name / "adv.png").is_file()
    for row in rows:
        assert row["clean_pred"] != "" and 0 <= int(row["clean_pred"]) < 1000


def test_run_names_every_bad_file_and_keeps_every_good_image_once(corpus, tmp_path,
                                                                  monkeypatch) -> None:
    config = tmp_path / "c.yaml"
    torch.manual_seed(0)
    model = make_tiny_model(0, 1000)
    config.write_text(yaml.safe_dump({
        "images": str(corpus), "interpreters": ["cam"], "attacks": {"pgd": {"steps": 1}},
        "transfer": False, "image_size": 64}))
    import adv2.experiment.runner as runner

    monkeypatch.setattr(runner, "load_model", lambda *args: model)
    summary = run_experiment(load_config(config), tmp_path / "run", progress=False)
    manifest = _strict((tmp_path / "run" / "images.json").read_text())
    assert sorted(i["name"] for i in manifest["images"]) == sorted(GOOD)
    assert set(BAD) <= {Path(e["file"]).name for e in manifest["load_errors"]}
    assert summary["attacks"]["cam"]["pgd"]["images"] == len(GOOD)
    records = Store(tmp_path / "run").records("cam/pgd", sorted(GOOD))
    assert sorted(records) == sorted(GOOD)
    for path in (tmp_path / "run").rglob("*.json"):
        _strict(path.read_text())


@pytest.mark.parametrize("args, named", [
    (["--eps", "-1"], "--eps"), (["--eps", "2"], "--eps"), (["--eps", "nan"], "--eps"),
    (["--target-class", "1000"], "--target-class"), (["--target-class", "-1"], "--target-class"),
    (["--batch-size", "0"], "--batch-size"), (["--steps", "-3"], "--steps"),
    (["--limit", "0"], "--limit"), (["--lam", "abc", "--attack", "adv2"], "--lam"),
    (["--lr", "0"], "--lr"), (["--warm-steps", "-1"], "--warm-steps"),
    (["--patience", "-2", "--attack", "adv2"], "--patience"),
    (["--lam-search", "-1", "--attack", "adv2"], "--lam-search"),
])
def test_bad_arguments_exit_2_naming_the_option(tmp_path, caplog, tiny1000, args,
                                                named) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(make_images(1)[0]).save(images / "a.png")
    assert _attack(images, tmp_path / "out", *args) == 2
    assert named in caplog.text
    assert "Traceback" not in caplog.text
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_fractions_and_out_files(tmp_path, caplog, tiny1000, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(make_images(1)[0]).save(images / "a.png")
    assert _attack(images, tmp_path / "frac", "--eps", "8/255") == 0
    assert _strict((tmp_path / "frac" / "config.json").read_text())["eps"] == 8 / 255
    (tmp_path / "file").write_text("x")
    assert _attack(images, tmp_path / "file") == 2
    assert "--out" in caplog.text and "not a folder" in caplog.text
    with pytest.raises(SystemExit) as exit_:
        _attack(images, tmp_path / "o", "--eps", "abc")
    assert exit_.value.code == 2 and "--eps" in capsys.readouterr().err


def _nan_for_black(x: torch.Tensor) -> torch.Tensor:
    """A normalisation that breaks the model for all-black images."""
    black = x.flatten(1).amax(dim=1).view(-1, 1, 1, 1) == 0
    return torch.where(black, torch.full_like(x, float("nan")), x)


def test_non_finite_outputs_are_errors_never_metrics(tmp_path, monkeypatch) -> None:
    tiny = make_tiny_model(0, 1000)
    model = Classifier(tiny.body, tiny.head, tiny.linear, _nan_for_black, "broken")
    monkeypatch.setattr(cli.attack, "load_model", lambda *args: model)
    images = tmp_path / "images"
    images.mkdir()
    pictures = make_images(3)
    pictures[1] = 0
    for i, picture in enumerate(pictures):
        Image.fromarray(picture).save(images / f"{i}.png")
    assert _attack(images, tmp_path / "out") == 0
    summary = _strict((tmp_path / "out" / "summary.json").read_text())
    assert [r["file"] for r in _rows(tmp_path / "out")] == ["0.png", "2.png"]
    assert {e["file"]: "non-finite" in e["error"] for e in summary["errors"]} == {"1.png": True}
    assert all(math.isfinite(summary[k]) for k in ("l1_mean", "iou_mean", "success_rate"))


def test_attack_resumes_refuses_other_settings_and_overwrites(tmp_path, caplog,
                                                              tiny1000) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i, picture in enumerate(make_images(3)):
        Image.fromarray(picture).save(images / f"{i}.png")
    out = tmp_path / "out"
    assert _attack(images, out, "--batch-size", "1") == 0
    first = (out / "results.csv").read_bytes()
    records = {p: p.stat().st_mtime_ns for p in (out / "records").glob("*.npz")}
    assert len(records) == 3
    assert _attack(images, out, "--batch-size", "1") == 0  # everything is already there
    assert (out / "results.csv").read_bytes() == first
    assert {p: p.stat().st_mtime_ns for p in records} == records
    assert _attack(images, out, "--batch-size", "1", "--steps", "3") == 2
    assert "changed: steps" in caplog.text
    assert _attack(images, out, "--batch-size", "1", "--steps", "3", "--overwrite") == 0
    assert _strict((out / "config.json").read_text())["steps"] == 3
    # a picture replaced under the same name is attacked again, the others are not
    picture = make_images(1, seed=9)[0]
    Image.fromarray(picture).save(images / "1.png")
    before = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.npz")}
    assert _attack(images, out, "--batch-size", "1", "--steps", "3") == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.npz")}
    assert [n for n in before if before[n] != after[n]] == ["1.png.npz"]
    meta = Store(out, "records").load("", "1.png").meta
    row = next(r for r in _rows(out) if r["file"] == "1.png")  # bound to picture, label, target
    assert meta["input"] == input_digest(image_digest(load_image(images / "1.png")),
                                         int(row["label"]), int(row["target"]))


def test_targets_do_not_depend_on_the_other_files(tmp_path, tiny1000) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i, picture in enumerate(make_images(3)):
        Image.fromarray(picture).save(images / f"{i}.png")
    assert _attack(images, tmp_path / "a") == 0
    Image.fromarray(make_images(1, seed=5)[0]).save(images / "00-new.png")
    assert _attack(images, tmp_path / "b") == 0
    a = {r["file"]: r["target"] for r in _rows(tmp_path / "a")}
    b = {r["file"]: r["target"] for r in _rows(tmp_path / "b")}
    assert set(b) == set(a) | {"00-new.png"}
    assert all(b[name] == target for name, target in a.items())


def test_labels_csv_header_and_duplicates(tmp_path, tiny1000, caplog) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(make_images(1)[0]).save(images / "a.png")
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("a.png,not_a_class\n")  # not a header: an error naming line 1
    assert _attack(images, tmp_path / "o1", "--labels", str(unknown)) == 2
    assert "unknown.csv:1" in caplog.text and "not_a_class" in caplog.text
    twice = tmp_path / "twice.csv"
    twice.write_text("path,label\na.png,1\nb.png,2\na.png,3\n")
    assert _attack(images, tmp_path / "o2", "--labels", str(twice)) == 2
    assert "twice.csv:4" in caplog.text and "lines 2 and 4" in caplog.text


def _test_resnet(root: Path) -> Path:
    """Weights of timm's tiny ``test_resnet`` with confident predictions."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False)
    with torch.no_grad():
        w = net.get_classifier().weight
        w.mul_(300.0).sub_(w.mean(dim=1, keepdim=True))
    torch.save(net.state_dict(), root / "tiny.pth")
    return root / "tiny.pth"


def _attack_process(images: Path, out: Path, weights: Path) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    args = ["attack", "--model", "timm:test_resnet", "--weights", str(weights), "--images",
            str(images), "--out", str(out), "--interpreter", "cam", "--attack", "adv2",
            "--steps", "6", "--warm-steps", "4", "--batch-size", "1", "--seed", "0"]
    return subprocess.Popen([sys.executable, "-m", "adv2", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_attack_killed_with_sigkill_resumes_to_the_uninterrupted_results(tmp_path) -> None:
    weights = _test_resnet(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    for i, picture in enumerate(make_images(6, seed=1, size=64)):
        Image.fromarray(picture).save(images / f"img_{i}.png")
    reference = tmp_path / "reference"
    proc = _attack_process(images, reference, weights)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out

    killed = tmp_path / "killed"
    proc = _attack_process(images, killed, weights)
    deadline = time.time() + 120
    while not list((killed / "records").glob("*.npz")) and proc.poll() is None:
        assert time.time() < deadline, "no result appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, out
    done = list((killed / "records").glob("*.npz"))
    assert 1 <= len(done) < 6
    if (killed / "results.csv").exists():  # rewritten after each unit's records
        with open(killed / "results.csv", newline="") as fh:
            assert len(list(csv.DictReader(fh))) >= len(done) - 1
    proc = _attack_process(images, killed, weights)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert (killed / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()
    for i in range(6):
        name = f"img_{i}.png"
        assert (killed / "samples" / name / "adv.png").read_bytes() == (
            reference / "samples" / name / "adv.png").read_bytes()


def _tiny_run_config(tmp_path: Path, images: Path, **extra) -> Path:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "images": str(images), "interpreters": ["cam"], "attacks": {"pgd": {"steps": 1}},
        "transfer": False, "image_size": 64, **extra}))
    return config


def _imagenet_named(folder: Path, n: int) -> list[str]:
    folder.mkdir()
    names = [f"n01440764_{i}.png" for i in range(n)]  # labelled tench by their synset
    for name, picture in zip(names, make_images(n, seed=2, size=64)):
        Image.fromarray(picture).save(folder / name)
    return names


def test_run_and_attack_share_targets_and_warn_on_a_misconfigured_model(
        tmp_path, monkeypatch, caplog, tiny1000) -> None:
    import adv2.experiment.runner as runner

    monkeypatch.setattr(runner, "load_model", lambda *args: tiny1000)
    images = tmp_path / "images"
    names = _imagenet_named(images, 3)
    run_experiment(load_config(_tiny_run_config(tmp_path, images)), tmp_path / "run",
                   progress=False)
    manifest = _strict((tmp_path / "run" / "images.json").read_text())
    assert "are the weights and normalisation right?" in caplog.text  # random tiny weights
    assert manifest["clean_accuracy"] < 0.5
    assert _attack(images, tmp_path / "attack") == 0
    summary = _strict((tmp_path / "attack" / "summary.json").read_text())
    assert summary["clean_accuracy"] == manifest["clean_accuracy"]
    by_run = {i["name"]: i["target"] for i in manifest["images"]}
    by_attack = {r["file"]: int(r["target"]) for r in _rows(tmp_path / "attack")}
    assert by_run == by_attack and set(by_run) == set(names)


def test_run_refuses_a_target_class_the_model_lacks(tmp_path, monkeypatch) -> None:
    import adv2.experiment.runner as runner
    from adv2.experiment import ConfigError

    monkeypatch.setattr(runner, "load_model", lambda *args: make_tiny_model(0, 1000))
    images = tmp_path / "images"
    _imagenet_named(images, 1)
    cfg = load_config(_tiny_run_config(tmp_path, images, target_class=1000))
    with pytest.raises(ConfigError, match=r"target_class: must be a class index in \[0, 999\]"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_run_recomputes_the_records_of_a_replaced_picture(tmp_path, monkeypatch) -> None:
    import adv2.experiment.runner as runner

    monkeypatch.setattr(runner, "load_model", lambda *args: make_tiny_model(0, 1000))
    images = tmp_path / "images"
    names = _imagenet_named(images, 3)
    config = _tiny_run_config(tmp_path, images)
    run_experiment(load_config(config), tmp_path / "run", progress=False)
    stage = tmp_path / "run" / "results" / "cam" / "pgd"
    before = {p.name: p.stat().st_mtime_ns for p in stage.glob("*.npz")}
    Image.fromarray(make_images(1, seed=7, size=64)[0]).save(images / names[1])
    run_experiment(load_config(config), tmp_path / "run", progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in stage.glob("*.npz")}
    assert [n for n in before if before[n] != after[n]] == [f"{names[1]}.npz"]
    record = Store(tmp_path / "run").load("cam/pgd", names[1])
    assert record.meta["input"] == input_digest(image_digest(load_image(images / names[1], 64)),
                                                record.meta["label"], record.meta["target"])


@pytest.mark.parametrize("case", ["nan", "text", "truncated", "pickle"])
def test_bad_weights_files_exit_2_naming_the_file(tmp_path, caplog, case) -> None:
    weights = _test_resnet(tmp_path)
    state = torch.load(weights, weights_only=True)
    bad = tmp_path / f"{case}.pth"
    if case == "nan":
        next(v for v in state.values() if v.is_floating_point())[0] = float("nan")
        torch.save(state, bad)
    elif case == "text":
        bad.write_text("these are not weights\n")
    elif case == "truncated":
        bad.write_bytes(weights.read_bytes()[:1000])
    else:
        import pickle

        class Payload:
            def __reduce__(self):
                return (os.system, ("echo owned",))

        bad.write_bytes(pickle.dumps({"w": Payload()}))
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(make_images(1)[0]).save(images / "a.png")
    code = cli.main(["attack", "--model", "timm:test_resnet", "--weights", str(bad),
                     "--images", str(images), "--out", str(tmp_path / "out")])
    assert code == 2 and bad.name in caplog.text
    assert {"nan": "non-finite", "text": "not a PyTorch checkpoint",
            "truncated": "not a readable PyTorch checkpoint",
            "pickle": "refused"}[case] in caplog.text
    assert "weights_only=False will likely succeed" not in caplog.text
    assert not (tmp_path / "out").exists()
