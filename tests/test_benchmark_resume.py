"""A benchmark row kept image by image in a work folder (``--work``): read back whole, only the
missing images attacked again, and a changed row never read back."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

from adv2 import pipeline, target_maps
from adv2.benchmarking import batches, image_targets, pick_images, run_batches, stacked
from adv2.interpreters import build_interpreter
from conftest import load_file, make_tiny_model
from test_countermeasures import labelled_images


@pytest.fixture
def row(tmp_path: Path):
    """The tiny model, 3 correctly classified samples, their targets, and a row's runner."""
    model = make_tiny_model(0, 1000)
    samples = pick_images(model, labelled_images(tmp_path / "images", model, 3), 3, 0)
    tgts = image_targets(model, samples, 0)

    def run(work: Path | None, steps: int = 2) -> tuple[dict, float]:
        cfg = pipeline.AttackConfig(interpreter="cam", seed=0, steps=steps, warm_steps=2)
        interpreter = build_interpreter("cam", model)
        attack = pipeline.build_attack(cfg, model, interpreter)
        return run_batches(cfg, model, interpreter, attack, samples, tgts, 2, work)
    return run, samples


def attacked_names(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the images attacked from now on (filled as ``attack_batch`` runs)."""
    names: list[str] = []
    real = batches.attack_batch

    def spy(*args, **kwargs):
        names.extend(args[7])
        return real(*args, **kwargs)
    monkeypatch.setattr(batches, "attack_batch", spy)
    return names


def same(a: dict, b: dict) -> bool:
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def tiny_page(script: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              n_images: int) -> Path:
    """Gives a benchmark script the tiny model (its ``load_model``) and returns a folder of
    ``n_images`` labelled images the model classifies correctly."""
    model = make_tiny_model(0, 1000)
    monkeypatch.setattr(script, "load_model", lambda device="cpu": model)
    return labelled_images(tmp_path / "images", model, n_images)


def run_twice(script: ModuleType, options: list[str], tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Runs a page's command twice with the same ``--work``; asserts the second run attacks
    nothing. Returns the two pages."""
    options = [*options, "--work", str(tmp_path / "work")]
    first, second = tmp_path / "first.md", tmp_path / "second.md"
    assert script.main([*options, "--out", str(first)]) == 0
    names = attacked_names(monkeypatch)
    assert script.main([*options, "--out", str(second)]) == 0
    assert names == []
    return first, second


def test_a_finished_row_is_read_back_whole(row, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    run, samples = row
    work = tmp_path / "work"
    fresh, seconds = run(None)
    kept, kept_seconds = run(work)
    assert same(fresh, kept)
    assert len(list(work.glob("rows/row-*/*.npz"))) == len(samples)
    names = attacked_names(monkeypatch)
    again, again_seconds = run(work)
    assert names == [] and same(kept, again) and again_seconds == kept_seconds


def test_an_interrupted_row_attacks_only_the_missing_images(row, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    run, samples = row
    work = tmp_path / "work"
    whole, _ = run(work)
    next(work.glob(f"rows/row-*/{samples[2].key}.npz")).unlink()  # the run stopped there
    names = attacked_names(monkeypatch)
    resumed, _ = run(work)
    assert names == [samples[2].name]
    assert same(whole, resumed)


def test_a_changed_row_is_recomputed(row, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run, samples = row
    work = tmp_path / "work"
    run(work)
    names = attacked_names(monkeypatch)
    run(work, steps=3)
    assert names == [s.name for s in samples]
    assert len(list(work.glob("rows/row-*"))) == 2


def test_the_countermeasures_page_resumes_from_its_work_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_countermeasures import script
    folder = tiny_page(script, tmp_path, monkeypatch, 5)
    first, second = run_twice(script, [
        "--images", str(folder), "--benign", "3", "--attacked", "2", "--fpr", "0.34",
        "--folds", "2", "--detectors", "ensemble", "--attack-setting", "steps=2",
        "--attack-setting", "warm_steps=2", "--batch-size", "2"], tmp_path, monkeypatch)

    def tables(page: Path) -> list[str]:  # the attacks' rows and values (the calibration,
        # and so its seconds per input, is made again)
        return [line for line in page.read_text().splitlines()
                if line.startswith(("|", "- ")) and not line.startswith("| ensemble |")]
    assert tables(first) == tables(second)


def test_the_mask_budget_page_resumes_at_the_first_batch_it_lacks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    budget = load_file("benchmarks/mask_budget.py")
    folder = tiny_page(budget, tmp_path, monkeypatch, 3)
    made: list[list[str]] = []

    def measured(args, model, chosen) -> dict:  # a batch's numbers, from its images' names
        made.append([s.name for s in chosen])
        n, v = len(chosen), len(made[-1][0]) / 100
        return {"names": made[-1], "floor_iou": [v] * n, "floor_l1": v,
                "curve": [[300.0, v, v, None, None], [2900.0, v, v, v, v]],
                "success": [1.0] * n, "iou": [v] * n, "l1": [v] * n, "passes": 2900.0,
                "minutes": 1.0, "threads": 1}
    monkeypatch.setattr(budget, "measure_batch", measured)
    work = tmp_path / "work"
    options = ["--images", str(folder), "--n", "3", "--batch-size", "2", "--work", str(work)]
    first, second = tmp_path / "first.md", tmp_path / "second.md"
    assert budget.main([*options, "--out", str(first)]) == 0
    kept = sorted(work.glob("batch-*.json"), key=lambda f: f.stat().st_mtime_ns)
    assert [len(b) for b in made] == [2, 1] and len(kept) == 2
    kept[1].unlink()  # the run stopped after its first batch
    assert budget.main([*options, "--out", str(second)]) == 0
    assert made[2:] == [made[1]]  # only the lost batch is measured again
    assert first.read_text() == second.read_text()
    assert "## Images 1–2: " in first.read_text() and "## Image 3: " in first.read_text()


def test_the_detection_report_resumes_from_its_work_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = load_file("benchmarks/detection_report.py")
    folder = tiny_page(report, tmp_path, monkeypatch, 6)
    first, second = run_twice(report, [
        "--images", str(folder), "--interpreters", "cam:1", "--benign", "4", "--folds", "2",
        "--fpr", "0.25", "--squeezers", "bit-4", "median-2x2", "--specific", "--no-all"],
        tmp_path, monkeypatch)
    assert first.read_text() == second.read_text()


def test_the_square_rows_are_read_back_from_the_work_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The black-box page's peer rows (torchattacks.Square, here a stand-in that spends a
    few queries on an unchanged image) keep each image's numbers: a rerun runs nothing."""
    blackbox = load_file("benchmarks/blackbox_benchmark.py")
    model = make_tiny_model(0, 1000)
    samples = pick_images(model, labelled_images(tmp_path / "images", model, 2), 2, 0)
    tgts = image_targets(model, samples, 0)
    runs: list[int] = []

    class Square:  # the interface the benchmark uses
        def __init__(self, model, **settings) -> None:
            self.model = model

        def set_mode_targeted_by_label(self, quiet: bool) -> None:
            pass

        def __call__(self, x, t):
            runs.append(len(x))
            for _ in range(3):
                self.model(x)
            return x
    monkeypatch.setitem(sys.modules, "torchattacks", SimpleNamespace(Square=Square))
    cam = build_interpreter("cam", model)
    x, labels = stacked(model, samples)
    benign = target_maps.benign(cam, x, labels)
    work = tmp_path / "work"
    first = blackbox.square_rows(model, cam, samples, tgts, benign, 8 / 255, 100, 0, work)
    assert runs == [1, 1] and [s.queries for s in first[0]] == [3, 3]
    again = blackbox.square_rows(model, cam, samples, tgts, benign, 8 / 255, 100, 0, work)
    assert runs == [1, 1] and again == first
    blackbox.square_rows(model, cam, samples, tgts, benign, 8 / 255, 50, 0, work)
    assert runs == [1, 1, 1, 1]  # another budget is another row


def test_the_attack_benchmark_resumes_from_its_work_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attack page's rows run again with the same --work attack nothing and come back the
    same, seconds per image included (only the step costs are timed anew)."""
    benchmark = load_file("benchmarks/attack_benchmark.py")
    folder = tiny_page(benchmark, tmp_path, monkeypatch, 2)
    first, second = run_twice(benchmark, [
        "--images", str(folder), "--interpreters", "cam:2", "--batch-size", "1"],
        tmp_path, monkeypatch)

    def rows(page: Path) -> list[str]:
        return [line for line in page.read_text().splitlines() if line.count("|") == 13]
    assert len(rows(first)) == 5 and rows(first) == rows(second)  # header, floor, PGD, ADV²
