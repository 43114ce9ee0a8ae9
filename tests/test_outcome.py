"""Typed per-image outcomes and the one preparation path: an :class:`~adv2.outcome.Outcome`
round-trips through its record unchanged, a record written without per-interpreter distances
still reads, and ``adv2 attack``, ``adv2 run`` and the benchmarks prepare images with one
function."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_images, make_tiny_model

from adv2.attack_config import AttackConfig, build_attack
from adv2.batch import attack_batch
from adv2.data import Sample
from adv2.errors import SettingError
from adv2.interpreters import build_interpreter
from adv2.outcome import Distance, Outcome
from adv2.output import RunWriter
from adv2.preparation import NON_FINITE, prepare_images
from adv2.records import Alone, Store, run_units


def _samples(n: int) -> list[Sample]:
    return [Sample(f"img_{i}.png", None, image, None)
            for i, image in enumerate(make_images(n, seed=3))]


def _outcomes(interpreter: str, support: str = "full") -> list[Outcome]:
    model = make_tiny_model(0)
    samples = _samples(2)
    cfg = AttackConfig(model="tiny", interpreter=interpreter, attack="adv2", steps=2,
                       warm_steps=2, support=support)
    prepared = prepare_images(samples, model, cfg.seed, None, "benign", 2, "test")
    interp = build_interpreter(interpreter, model)
    return attack_batch(cfg, model, interp, build_attack(cfg, model, interp), prepared.images,
                        prepared.labels, prepared.targets, [s.name for s in samples], None)


@pytest.mark.parametrize("interpreter, support", [("cam", "edges"), ("cam+grad", "full")])
def test_an_outcome_round_trips_through_its_record(tmp_path, interpreter, support) -> None:
    outcomes = _outcomes(interpreter, support)
    assert all(isinstance(o, Outcome) for o in outcomes)
    names = ["a", "b"]
    store = Store(tmp_path)
    run_units(Alone(), store, "s", [names], lambda _: outcomes, False, {"a": "da", "b": "db"})
    for name, outcome in zip(names, outcomes):
        record = store.load("s", name)
        assert record.meta.pop("input") == f"d{name}"
        arrays, meta = outcome.to_record()
        again = Outcome.from_record(record).to_record()
        assert again[1] == meta == record.meta
        assert list(again[0]) == list(arrays) == list(record.arrays)
        assert all(np.array_equal(arrays[k], again[0][k]) for k in arrays)
    assert set(outcomes[0].per_interpreter) == set(interpreter.split("+"))
    assert (outcomes[0].support is not None) == (support != "full")


def test_a_record_without_per_interpreter_distances_reads_as_its_interpreter(tmp_path) -> None:
    """A record written before per-interpreter distances were kept: its one interpreter's l1
    and iou, in results.csv's columns and summary.json's per_interpreter."""
    outcome = _outcomes("cam")[0]
    arrays, meta = outcome.to_record()
    del meta["per_interpreter"]
    config = {"interpreter": "cam"}
    with RunWriter(tmp_path / "out", config) as writer:
        writer.store.save("", "a.png", arrays, meta | {"clean_pred": 1})
        writer.expect(["a.png"])
        summary = writer.finish(1.0, (0.1, 0.2), None)
    old = Outcome.from_record(writer.store.load("", "a.png"))
    assert old.per_interpreter is None
    assert old.distances("cam") == {"cam": Distance(outcome.l1, outcome.iou)}
    assert summary["per_interpreter"]["cam"] == {"iou_mean": pytest.approx(outcome.iou_mean),
                                                 "l1_mean": pytest.approx(outcome.l1)}
    row = (tmp_path / "out" / "results.csv").read_text().splitlines()[1].split(",")
    assert row[-2:] == [str(round(outcome.iou_mean, 6)), str(round(outcome.l1, 6))]


def test_preparation_skips_non_finite_images_and_names_a_missing_target_class() -> None:
    model = make_tiny_model(0)
    samples = _samples(3)
    model.linear.bias.data[0] = float("nan")  # every logit row non-finite
    prepared = prepare_images(samples, model, 0, None, "benign", 2, "test")
    assert prepared.skipped == {0: NON_FINITE, 1: NON_FINITE, 2: NON_FINITE}
    with pytest.raises(SettingError, match=r"target_class: must be a class index in \[0, 9\]"):
        prepare_images(samples, make_tiny_model(0), 0, 10, "benign", 2, "test")


def test_preparation_targets_are_per_image_and_chunk_free() -> None:
    """Each image's target depends on its key and the seed only, not on the other images or
    the prediction chunk (what lets adv2 attack and adv2 run agree)."""
    model = make_tiny_model(0)
    samples = _samples(4)
    whole = prepare_images(samples, model, 5, None, "benign", 3, "test")
    alone = [prepare_images([s], model, 5, None, "benign", 1, "test") for s in samples]
    assert torch.equal(whole.targets, torch.cat([p.targets for p in alone]))
    assert torch.equal(whole.labels, whole.preds)  # no label: the prediction
