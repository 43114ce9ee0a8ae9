"""The benchmarks' choice of images (attacked images are never those an interpreter was trained
on, and runs without a trained interpreter keep the images of their committed reports), their
counts, and their rows: one image's outcome is that of ``adv2 attack`` on it (issue 36)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adv2 import cli, pipeline
from adv2.benchmarking import image_targets, pick_images, run_batches
from adv2.interpreters import build_interpreter
from adv2.models import load_model
from adv2.target_classes import choose_targets
from conftest import IMAGENET_SAMPLE, REPO, load_file, needs_shared

split = load_file("benchmarks/detection_report.py").split
removal_losses = load_file("benchmarks/rts_quality.py").removal_losses


def test_detection_split_without_trained_interpreters_is_the_permutation_tail() -> None:
    benign, pool = split(500, 440, seed=0)
    order = np.random.default_rng(0).permutation(500)
    assert (benign == order[:440]).all() and (pool == order[440:]).all()


def test_detection_split_attacks_only_images_no_interpreter_was_fitted_on() -> None:
    order = np.random.default_rng(0).permutation(500)
    fitted = np.zeros(500, dtype=bool)
    fitted[order[100:]] = True  # as RTS's checkpoint: the permutation's first 100 held out
    benign, pool = split(500, 440, seed=0, fitted=fitted)
    assert len(pool) == 60 and not fitted[pool].any()
    assert len(benign) == 440 and not set(benign) & set(pool)
    with pytest.raises(ValueError, match="lower --benign to at most 400"):
        split(500, 390, seed=0, fitted=fitted)  # 110 to attack, 100 unseen


def test_rts_quality_counts_removal_losses_and_the_ties_near_zero() -> None:
    # rows: area, kept, removed, box kept, box removed
    rows = np.array([[0.3, 0.5, 0.10, 0.4, 0.30],   # the mask removes more: not counted
                     [0.3, 0.5, 0.02, 0.4, 0.01],   # loses, both below 0.05
                     [0.3, 0.5, 0.60, 0.4, 0.05],   # loses for real
                     [0.3, 0.5, 0.03, 0.4, 0.03]])  # a tie counts as a loss, near zero
    assert removal_losses(rows) == ("the mask does not remove more than the box on 3 of 4 "
                                    "images; on 2 of them both leave p(y) < 0.05")


@needs_shared
@pytest.mark.parametrize("attack", ["pgd", "adv2"])
def test_a_benchmark_row_of_one_image_is_adv2_attack_on_that_image(tmp_path: Path,
                                                                    attack: str) -> None:
    """The benchmarks' target (``image_targets``) and outcome (``run_batches``, the rows'
    numbers) for one image are those ``adv2 attack`` records for it with the same seed and
    settings, bit for bit: the same per-image target rule and sample key (a subfolder's ``/``
    written ``__``), the same batch body. Short attacks keep it quick."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    source = sorted(IMAGENET_SAMPLE.glob("*.JPEG"))[0]  # tench, classified correctly
    shutil.copy(source, folder / "sub" / source.name)
    seed, steps = 0, ["--steps", "10"] + (["--warm-steps", "10"] if attack == "adv2" else [])
    model = load_model()
    samples = pick_images(model, folder, 1, seed)
    assert [s.name for s in samples] == [f"sub/{source.name}"]
    tgts = image_targets(model, samples, seed)
    # the per-image rule, not the old one-rng-per-batch draw (which gives this image 850)
    assert int(tgts[0]) != int(choose_targets(torch.tensor([samples[0].label]), 1000, seed,
                                              None)[0])
    cfg = pipeline.AttackConfig(interpreter="cam", attack=attack, seed=seed, steps=10,
                                warm_steps=10 if attack == "adv2" else None)
    interpreter = build_interpreter("cam", model)
    row, _ = run_batches(cfg, model, interpreter, pipeline.build_attack(cfg, model, interpreter),
                         samples, tgts, 8)

    out = tmp_path / "out"
    assert cli.main(["attack", "--images", str(folder), "--out", str(out), "--interpreter",
                     "cam", "--attack", attack, "--seed", str(seed), *steps]) == 0
    with open(out / "results.csv", newline="") as fh:
        (result,) = list(csv.DictReader(fh))
    summary = json.loads((out / "summary.json").read_text())
    assert result["file"] == samples[0].name
    assert int(result["target"]) == int(tgts[0])
    assert summary["n_images"] == 1 and not summary["errors"]
    assert summary["success_rate"] == row["success"][0].item()
    assert summary["mean_confidence"] == row["confidence"][0].item()
    assert summary["l1_mean"] == row["l1"][0].item()
    assert list(summary["iou_per_k"].values()) == row["iou"][0].tolist()
    assert summary["iou_mean"] == pytest.approx(row["iou"][0].mean().item(), abs=1e-6)
    assert summary["passes_per_image"] == row["passes"][0].item()
    assert summary["changed_mean"] == row["changed"][0].item()
    assert summary["l2_mean"] == row["l2"][0].item()
    adv = np.asarray(Image.open(out / "samples" / samples[0].name / "adv.png"))
    assert np.array_equal(adv, row["adv"][0])


def test_the_scripts_tables_write_the_published_rows() -> None:
    """The attack benchmark's and the detection report's tables (``Table`` with blank cells
    and unaligned rules) write the lines of their published pages, character for character."""
    attack = load_file("benchmarks/attack_benchmark.py").Results().table
    page = (REPO / "docs" / "benchmarks" / "cam.md").read_text()
    floor = ["cam", "floor (±1/255 noise)", 20, None, None, torch.tensor(0.0097),
             torch.tensor(0.959), "0.97/0.94/0.96/0.96/0.97", None, None, None, None]
    pgd = ["cam", "PGD", 20, torch.tensor(1.0), torch.tensor(1.0), torch.tensor(0.2696),
           torch.tensor(0.317), "0.14/0.23/0.32/0.40/0.48", 7.09, torch.tensor(101.0),
           torch.tensor(0.999), torch.tensor(7.84)]
    attack.rows = [floor, pgd]
    assert attack.markdown() in page
    detection = load_file("benchmarks/detection_report.py")
    table4, table5 = detection.tables(detection.build_parser().parse_args(["--specific", "bit-2"]))
    table4.rows = [["cam", "bit-2", 1.382, "5.2% (23/440)", "100.0%", "100.0%", "0.0%", "0.0%"]]
    table5.rows = [["cam", "PGD", 20, 1.0, 0.2592, 0.339, "100.0%", 12.4]]
    text = (REPO / "docs" / "benchmarks" / "detection-cam.md").read_text()
    for table in (table4, table5):
        head, rule, row = table.markdown().splitlines()
        assert f"{head}\n{rule}\n" in text and f"\n{row}\n" in text
