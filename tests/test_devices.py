"""Tensors follow the model: no tensor made without a device, one configuration for the Python
API and the CLI, and (with CUDA) every attack on the GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import load_file, make_images, make_tiny_model
from torch.overrides import TorchFunctionMode

import adv2
from adv2 import cli, pipeline, target_maps
from adv2.attacks import ADV2, PGD, AdaptiveADV2
from adv2.benchmarking import (benign_and_floors, error_by_support, image_targets, run_batches,
                               stacked, step_cost, support_fractions, surrogate_unit_costs)
from adv2.data import Sample, to_tensor
from adv2.detection import EnsembleDetector, FeatureSqueezingDetector
from adv2.experiment import load_config, run_experiment
from adv2.interpreters import CAM, GRAD, IG, MASK, RTS, GradCAM, Interpreter, SmoothGrad
from adv2.rts import TrainConfig, TrainSettings, train
from test_experiment import _tiny_config
from test_rts import make_deep_tiny_model

SRC = str(Path(adv2.__file__).parent) + "/"
TORCH = str(Path(torch.__file__).parent) + "/"
FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.tensor,
             torch.rand, torch.randn, torch.randint, torch.randperm, torch.linspace, torch.eye}


class FactoryRecorder(TorchFunctionMode):
    """Records the tensor factory calls made by adv2's own code (and the files under ``roots``)
    without a ``device``."""

    def __init__(self, roots: tuple[str, ...] = (SRC,)) -> None:
        super().__init__()
        self.roots = roots
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and "device" not in kwargs:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(TORCH):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(self.roots):
                where = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"
                self.calls.append(f"{where} torch.{func.__name__}")
        return func(*args, **kwargs)


#: small settings of the interpreters that have costly defaults (the same on every device);
#: IG with the seeded uniform baseline (host draws), Grad-CAM at an inner layer
SETTINGS = {"mask": {"iterations": 3, "verify_every": 2},
            "ig": {"steps": 4, "baseline": "uniform", "attack_steps": 2, "verify_every": 2},
            "smoothgrad": {"samples": 4, "attack_samples": 2, "verify_every": 2},
            "gradcam": {"layer": "body.0"}}
NAMES = ["cam", "grad", "mask", "rts", "ig", "smoothgrad", "gradcam"]


def _interpreters(tmp_path: Path) -> list[tuple[torch.nn.Module, Interpreter]]:
    tiny, deep, encoder = make_tiny_model(0), make_deep_tiny_model(), make_deep_tiny_model(7)
    encoder.name = "deep-tiny-encoder"  # RTS with an encoder of its own, as shipped
    train(deep, make_images(6), torch.arange(6), tmp_path,
          TrainSettings(TrainConfig(steps=2, batch_size=3, selector_steps=2,
                                    selector_batch_size=3), progress=False), encoder)
    return [(tiny, CAM(tiny)), (tiny, GRAD(tiny)), (tiny, MASK(tiny, **SETTINGS["mask"])),
            (deep, RTS(deep, tmp_path / "rts.pt", encoder=encoder)),
            (tiny, IG(tiny, **SETTINGS["ig"])),
            (tiny, SmoothGrad(tiny, **SETTINGS["smoothgrad"])),
            (tiny, GradCAM(tiny, **SETTINGS["gradcam"]))]


def test_no_tensor_is_made_without_a_device(tmp_path) -> None:
    """PGD, ADV² and adaptive ADV² on every interpreter (the seeded ones with per-image
    seeds), the RTS trainer and the detectors, under a mode that records factory calls lacking a
    device: adv2's code makes none (host-side draws name the host)."""
    images = make_images(3, seed=4)
    recorder = FactoryRecorder()
    with recorder:
        pairs = _interpreters(tmp_path)
        for model, interpreter in pairs:
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
            labels = model(x).argmax(dim=1)
            targets = (labels + 1) % 10
            if interpreter.stochastic:  # seeded per image, as attack_batch does
                interpreter.use_seeds([11, 12, 13])
            benign = target_maps.benign(interpreter, x, labels)
            PGD(model, interpreter, steps=2)(images, targets, benign)
            attack = ADV2(model, interpreter, steps=2, warm_steps=2)
            attack(x, targets, benign)
            detector = FeatureSqueezingDetector(model, ["bit-4", "median-2x2"])
            detector.fit(make_images(6, seed=5), 0.2)
            AdaptiveADV2(attack, detector, steps=2)(images, targets)
        tiny, cam = pairs[0]  # the ensemble detector, alone and with squeezing
        ensemble = EnsembleDetector(tiny, ["cam", "grad"]).fit(make_images(6, seed=5), 0.2)
        squeeze = FeatureSqueezingDetector(tiny, ["bit-4"]).fit(make_images(6, seed=5), 0.2)
        attack = ADV2(tiny, cam, steps=2, warm_steps=2)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        targets = (tiny(x).argmax(dim=1) + 1) % 10
        AdaptiveADV2(attack, [squeeze, ensemble], steps=2)(images, targets)
    assert recorder.calls == [], "\n".join(sorted(set(recorder.calls)))


def test_the_benchmarks_make_no_tensor_without_a_device() -> None:
    """The benchmarks' shared code (targets, floors of a plain and a stochastic interpreter, a
    supported ADV² over batches and its texts, the step cost, GRAD's unit costs) and the
    scripts' own tensors (the detection report's detectors, RTS quality's boxes) on a tiny
    model make no tensor without a device."""
    model = make_tiny_model(0)
    images = make_images(3, seed=4)
    preds = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).argmax(dim=1)
    samples = [Sample(f"sub/{i}.png", None, image, int(p)) for i, (image, p)
               in enumerate(zip(images, preds))]
    keys = [s.key for s in samples]
    detection = load_file("benchmarks/detection_report.py")
    rts_quality = load_file("benchmarks/rts_quality.py")
    recorder = FactoryRecorder((SRC, str(Path(detection.__file__).parent) + "/"))
    with recorder:
        x, labels = stacked(model, samples)
        tgts = image_targets(model, samples, 0)
        benign_and_floors(SmoothGrad(model, **SETTINGS["smoothgrad"]), x, labels, keys, 0)
        cam, grad = CAM(model), GRAD(model)
        benign, _ = benign_and_floors(cam, x, labels, keys, 0)
        cfg = pipeline.AttackConfig(interpreter="cam", attack="adv2", seed=0, steps=2,
                                    warm_steps=2, support="edges")
        out, _ = run_batches(cfg, model, cam, pipeline.build_attack(cfg, model, cam), samples,
                             tgts, 2)
        support_fractions(out), error_by_support(out)
        step_cost(model, cam, x, tgts, benign, repeats=1)
        surrogate_unit_costs(grad, x, tgts, target_maps.benign(grad, x, labels), {}, repeats=1)
        detectors = detection.Detectors(model, ["bit-4", "median-2x2"], make_images(6, seed=5),
                                        0.2, 2, 0)
        detectors.flags(out["adv"])
        masks = rts_quality.centred_boxes(torch.full((3,), 0.25, device=x.device), x.shape[-1])
        rts_quality.probabilities(model, x, masks, labels, 2.0)
    assert recorder.calls == [], "\n".join(sorted(set(recorder.calls)))


def test_adv2_run_makes_no_tensor_without_a_device(tmp_path) -> None:
    """A tiny ``adv2 run`` (the experiment runner: CAM and GRAD × PGD and ADV², the transfer
    stage, detection by feature squeezing and the ensemble of interpreters, the report) makes
    no tensor without a device."""
    cfg = _tiny_config(tmp_path)
    cfg["detection"]["detectors"] = ["squeeze", "ensemble"]
    cfg["attacks"] = {"pgd": {"steps": 3, "lr": "4/255"}, "adv2": {"steps": 2, "warm_steps": 3}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    recorder = FactoryRecorder()
    with recorder:
        summary = run_experiment(load_config(path), tmp_path / "run", progress=False)
    assert recorder.calls == [], "\n".join(sorted(set(recorder.calls)))
    assert summary and (tmp_path / "run" / "report" / "tables" / "transfer_iou.csv").is_file()
    assert (tmp_path / "run" / "report" / "tables" / "detection.csv").is_file()


def test_the_recorder_sees_a_factory_call_without_a_device() -> None:
    recorder = FactoryRecorder()
    code = compile("torch.zeros(3)", str(Path(SRC) / "probe.py"), "exec")
    with recorder:
        exec(code, {"torch": torch})
        exec(compile("torch.zeros(3, device='cpu')", str(Path(SRC) / "probe.py"), "exec"),
             {"torch": torch})
    assert recorder.calls == ["probe.py:1 torch.zeros"]


@pytest.mark.parametrize("name", NAMES)
def test_python_api_and_cli_build_the_same_attack(name, tmp_path, monkeypatch) -> None:
    model, interpreter = {p[1].name: p for p in _interpreters(tmp_path)}[name]
    args = cli.build_parser().parse_args(["attack", "--interpreter", name, "--images", "x",
                                          "--out", "y"])
    from_cli = pipeline.build_attack(cli.attack.attack_config(args), model, interpreter)
    from_python = ADV2.for_interpreter(model, interpreter)
    assert from_cli.config() == from_python.config()
    assert from_python.steps == type(interpreter).attack_defaults["steps"]
    tuned = ADV2.for_interpreter(model, interpreter, steps=7, lam="3", lam_search=2)
    args = cli.build_parser().parse_args(["attack", "--interpreter", name, "--images", "x",
                                          "--out", "y", "--steps", "7", "--lam", "3",
                                          "--lam-search", "2"])
    assert pipeline.build_attack(cli.attack.attack_config(args), model, interpreter).config() \
        == tuned.config()


@pytest.mark.parametrize("name", NAMES)
def test_python_api_and_cli_apply_the_same_support_defaults(name, tmp_path) -> None:
    model, interpreter = {p[1].name: p for p in _interpreters(tmp_path)}[name]
    cls = type(interpreter)
    for support in ("edges", "target-map:0.3"):
        args = cli.build_parser().parse_args(["attack", "--interpreter", name, "--images", "x",
                                              "--out", "y", "--support", support])
        from_cli = pipeline.build_attack(cli.attack.attack_config(args), model, interpreter)
        from_python = ADV2.for_interpreter(model, interpreter, support=support)
        assert from_cli.config() == from_python.config()
        confined = {**cls.attack_defaults, **cls.support_attack_defaults}
        assert (from_python.steps, from_python.warm_steps) \
            == (confined["steps"], confined["warm_steps"])
    full = ADV2.for_interpreter(model, interpreter, support="full")
    assert full.config() == ADV2.for_interpreter(model, interpreter).config()
    assert (full.config() == from_python.config()) == (not cls.support_attack_defaults)
    tuned = ADV2.for_interpreter(model, interpreter, support="edges", steps=7)
    args = cli.build_parser().parse_args(["attack", "--interpreter", name, "--images", "x",
                                          "--out", "y", "--support", "edges", "--steps", "7"])
    assert pipeline.build_attack(cli.attack.attack_config(args), model, interpreter).config() \
        == tuned.config()
    assert tuned.steps == 7


def test_results_come_back_on_the_inputs_device() -> None:
    model = make_tiny_model(0)
    images = make_images(2)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    targets = torch.tensor([1, 2])
    for result in (ADV2(model, CAM(model), steps=2, warm_steps=2)(x, targets),
                   ADV2(model, CAM(model), steps=2, warm_steps=2)(images, targets)):
        assert result.x.device == result.success.device == result.maps.device == x.device
        assert result.adv.dtype == np.uint8 and result.adv.shape == images.shape


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("name", NAMES)
def test_attacks_run_natively_on_the_gpu(name, tmp_path) -> None:
    pairs = {p[1].name: p for p in _interpreters(tmp_path)}
    model, interpreter = pairs[name]
    images = make_images(3, seed=4)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    targets = (model(x).argmax(dim=1) + 1) % 10
    host = ADV2(model, interpreter, steps=3, warm_steps=3)(images, targets)
    model.to("cuda")
    gpu_interpreter = (
        RTS(model, tmp_path / "rts.pt", encoder=interpreter.net.encoder.to("cuda"))
        if name == "rts" else type(interpreter)(model, **SETTINGS.get(name, {})))
    on_gpu = ADV2(model, gpu_interpreter, steps=3, warm_steps=3)(x.cuda(), targets.cuda())
    assert on_gpu.x.is_cuda and on_gpu.maps.is_cuda and on_gpu.success.is_cuda
    assert (np.abs(on_gpu.adv.astype(int) - images.astype(int)) <= 8).all()
    assert on_gpu.maps.shape == host.maps.shape


@pytest.mark.parametrize("make", [lambda m: GRAD(m), lambda m: GRAD(m, fast=False),
                                  lambda m: GradCAM(m, layer="body"),
                                  lambda m: IG(m, attack_steps=2), lambda m: SmoothGrad(m)],
                         ids=["grad", "grad-generic", "gradcam", "ig", "smoothgrad"])
def test_an_interpreters_model_copies_follow_the_model_moved_after_it(make) -> None:
    """Interpreters that attack through a copy of the model (GRAD's surrogates) follow the
    model when it is moved or cast after they were built, as every tensor does."""
    model = make_tiny_model()
    interpreter = make(model)
    model.double()
    x = to_tensor(make_images(2, seed=4)).double().requires_grad_(True)
    logits, maps = interpreter.attack_forward(x, torch.tensor([1, 2]), 0.5)
    maps = maps if isinstance(maps, torch.Tensor) else torch.stack(maps)
    assert logits.dtype == maps.dtype == torch.float64
    (grad,) = torch.autograd.grad(maps.sum(), x)
    assert grad.abs().sum() > 0
