"""The countermeasures page (benchmarks/countermeasures.py) from its command on a tiny model and
a folder of tiny labelled images: every row, every detector's rate and AUROC, the per-image
values; and its judge is that of ``adv2 attack``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adv2 import pipeline
from adv2.benchmarking import image_targets, pick_images, run_batches
from adv2.benchmarking.pages import table_rows
from adv2.data import imagenet_classes, load_dataset, to_tensor
from adv2.detection import Detector, build_detector
from adv2.interpreters import build_interpreter
from adv2.models import Classifier
from conftest import load_file, make_images, make_tiny_model

script = load_file("benchmarks/countermeasures.py")
RATE = re.compile(r"^\d+% \(\d+/\d+\) \[\d+, \d+\]$")


def labelled_images(folder: Path, model: Classifier, n: int) -> Path:
    """n images named ``<synset>_<i>.png`` by the tiny model's prediction: all classified
    correctly."""
    folder.mkdir()
    for i, image in enumerate(make_images(n, seed=3, size=224)):
        Image.fromarray(image).save(folder / f"img_{i}.png")
    synsets = imagenet_classes().synsets
    for sample in load_dataset(folder).samples:
        with torch.no_grad():
            pred = int(model(to_tensor(sample.image)).argmax())
        (folder / sample.name).rename(folder / f"{synsets[pred]}_{sample.name}")
    return folder


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> Classifier:
    """The tiny model as the script's, and feature squeezing with two quick squeezers (the
    default's non-local means take 0.2 s per 224² image)."""
    model = make_tiny_model(0, 1000)
    monkeypatch.setattr(script, "load_model", lambda device="cpu": model)

    def quick(name: str, model: Classifier, settings: dict | None = None,
              batch_size: int = 32) -> Detector:
        quicker = {"squeezers": ["bit-4", "median-2x2"]} if name == "squeeze" else settings
        return build_detector(name, model, quicker, batch_size)

    monkeypatch.setattr(script, "build_detector", quick)
    return model


def test_the_page_holds_every_row_detector_and_image(tmp_path: Path, tiny: Classifier) -> None:
    folder = labelled_images(tmp_path / "images", tiny, 7)
    page = tmp_path / "docs" / "countermeasures.md"
    assert script.main(["--images", str(folder), "--benign", "5", "--attacked", "2",
                        "--fpr", "0.2", "--folds", "2", "--attack-setting", "steps=2",
                        "--attack-setting", "warm_steps=2", "--batch-size", "2",
                        "--out", str(page)]) == 0
    text = page.read_text()
    assert ("Command: `python benchmarks/countermeasures.py --benign 5 --attacked 2 --fpr 0.2 "
            "--folds 2 --detectors squeeze ensemble --interpreters cam grad --attack-setting "
            "steps=2 --attack-setting warm_steps=2 --seed 0 --batch-size 2 --threads 1`") in text
    assert script.EXPLANATION in text
    rows = table_rows(text)
    header = rows[0]
    assert header == ["attack", "n", "success", "IoU cam", "L1 cam", "IoU grad", "L1 grad",
                      "squeeze detected [95% CI]", "squeeze AUROC",
                      "ensemble detected [95% CI]", "ensemble AUROC", "s / image"]
    attacks = [r for r in rows if len(r) == len(header) and r[1] == "2"]
    assert [r[0] for r in attacks] == [
        "PGD", "ADV² (cam)", "ADV² (grad)", "ADV² (cam+grad)",
        "adaptive ADV² (cam+grad) vs squeeze", "adaptive ADV² (cam+grad) vs ensemble",
        "adaptive ADV² (cam+grad) vs squeeze + ensemble"]
    for row in attacks:
        assert RATE.match(row[7]) and RATE.match(row[9]), row
        assert all(0 <= float(row[c]) <= 1 for c in (2, 3, 5, 8, 10)), row
    detectors = [r for r in rows if len(r) == 5 and r[0] in ("squeeze", "ensemble")]
    assert [r[0] for r in detectors] == ["squeeze", "ensemble"]
    assert all(RATE.match(r[3]) and "/5) [" in r[3] for r in detectors)
    assert [r[1] for r in detectors] == ["squeezers: bit-4, median-2x2",
                                         "interpreters: cam, grad; ks: 0.1, 0.2, 0.3, 0.4, 0.5"]
    per_image = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(per_image) == len(attacks)
    assert all(len(re.search(r"score ensemble ([^;]+)$", line).group(1).split()) == 2
               for line in per_image)


def test_the_judge_is_that_of_adv2_attack_for_the_attacked_interpreter(tmp_path: Path,
                                                                       tiny: Classifier) -> None:
    """Each interpreter's IoU and L1 of the page for the interpreter a row attacked are those
    that ``adv2 attack``'s batch body records for it."""
    samples = pick_images(tiny, labelled_images(tmp_path / "images", tiny, 3), 3, 0)
    tgts = image_targets(tiny, samples, 0)
    cfg = pipeline.AttackConfig(interpreter="cam+grad", seed=0, steps=2, warm_steps=2)
    interpreter = build_interpreter("cam+grad", tiny)
    out, _ = run_batches(cfg, tiny, interpreter, pipeline.build_attack(cfg, tiny, interpreter),
                         samples, tgts, 3)
    judges = {name: build_interpreter(name, tiny) for name in ("cam", "grad")}
    values = script.judged(judges, tiny, samples, out["adv"], tgts, 0)
    assert torch.equal(values["success"], out["success"])
    assert np.allclose((values["iou cam"] + values["iou grad"]) / 2, out["iou"].mean(dim=1),
                       atol=1e-6)
    assert np.allclose((values["l1 cam"] + values["l1 grad"]) / 2, out["l1"], atol=1e-6)


@pytest.mark.parametrize("options, message", [
    (["--interpreters", "cam"], "two or more"),
    (["--benign", "5", "--folds", "10"], "need 2 ≤ folds ≤ --benign"),
])
def test_options_that_cannot_make_a_page_are_refused(options: list[str], message: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        script.main(options)
    assert stop.value.code == 2 and message in capsys.readouterr().err
