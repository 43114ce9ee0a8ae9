"""``adv2 run``: config validation, end-to-end runs, resume after kill -9, torchrun sharding,
failures recorded, and the report's tables and figures.

The tiny runs use timm's ``test_resnet`` (random weights, classifier scaled so that predictions
are confident) on 64×64 images through the real ``timm:<name>`` + weights path, and a large ε so
that some attacks succeed and some fail.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, make_images, needs_shared
from PIL import Image

from adv2.experiment import ConfigError, load_config, parse_config, run_experiment
from adv2.records import Store
from adv2.experiment.tables import Table

N_IMAGES = 4
TABLES = {"settings", "attacks", "transfer_l1", "transfer_iou", "detection", "errors"}
FIGURES = {"iou_k", "l1", "examples"}


def _tiny_config(root: Path) -> dict:
    """A tiny experiment: 4 readable images and a corrupt one, 6 benign images, tiny weights."""
    torch.manual_seed(0)
    import timm

    net = timm.create_model("test_resnet", pretrained=False)
    with torch.no_grad():  # confident predictions (zero-mean class weights, large scale)
        w = net.get_classifier().weight
        w.mul_(300.0).sub_(w.mean(dim=1, keepdim=True))
    torch.save(net.state_dict(), root / "tiny.pth")
    for folder, n, seed in (("images", N_IMAGES, 0), ("benign", 6, 1)):
        (root / folder).mkdir()
        for i, image in enumerate(make_images(n, seed=seed, size=64)):
            Image.fromarray(image).save(root / folder / f"img_{i}.png")
    (root / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg" * 50)
    return {
        "model": "timm:test_resnet", "weights": "tiny.pth", "images": "images",
        "image_size": 64, "seed": 0, "interpreters": ["cam", "grad"], "eps": "32/255",
        "attacks": {"pgd": {"steps": 10, "lr": "4/255"}, "adv2": {"steps": 4, "warm_steps": 10}},
        "transfer": True,
        "detection": {"benign_images": "benign", "squeezers": ["bit-4", "median-2x2"]},
        "report": {"examples": 2},
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(the tiny experiment file, its uninterrupted single-process run directory)."""
    root = tmp_path_factory.mktemp("experiment")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(_tiny_config(root)))
    run_experiment(load_config(path), root / "reference", progress=False)
    return path, root / "reference"


def _cli(*args: str, launcher: tuple[str, ...] = ("-m", "adv2")) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *launcher, *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _records(run: Path) -> dict[str, object]:
    """Every record of a run: npz contents (arrays and meta) and error files."""
    out = {}
    for path in sorted((run / "results").rglob("*")):
        rel = str(path.relative_to(run))
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                out[rel] = {k: npz[k] for k in npz.files}
        elif path.is_file():
            out[rel] = json.loads(path.read_text())
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def assert_same_results(run: Path, reference: Path) -> None:
    """Identical records (arrays bit for bit, metrics exactly) and identical result tables."""
    got, want = _records(run), _records(reference)
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        if isinstance(value, dict) and "meta" in value:
            assert value.keys() == got[key].keys(), key
            for name in value:
                assert np.array_equal(value[name], got[key][name]), f"{key}: {name} differs"
        else:
            assert got[key] == value, key
    for rel in ["report/results.csv", *[f"report/tables/{t}.csv" for t in TABLES]]:
        assert (run / rel).read_text() == (reference / rel).read_text(), rel


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


BASE = {"images": "imgs"}


@pytest.mark.parametrize("change, message", [
    ({"imagess": "x"}, r"unknown key imagess; did you mean 'images'"),
    ({"limit": "ten"}, r"limit: expected an integer"),
    ({"limit": 0}, r"limit: must be ≥ 1"),
    ({"seed": 1.5}, r"seed: expected an integer"),
    ({"eps": 2}, r"eps: must be in \(0, 1\]"),
    ({"eps": "8/x"}, r"eps: expected a number"),
    ({"interpreters": ["cam", "gard"]}, r"interpreters\[1\]: unknown interpreter 'gard'"),
    ({"interpreters": "cam"}, r"interpreters: expected a list"),
    ({"target_map": "blob"}, r"target_map: unknown value 'blob'"),
    ({"transfer": "yes"}, r"transfer: expected true/false"),
    ({"attacks": {"fgsm": {}}}, r"unknown key attacks.fgsm; valid keys: pgd, adv2"),
    ({"attacks": {"adv2": {"lamb": 3}}}, r"unknown key attacks.adv2.lamb; did you mean 'lam'"),
    ({"attacks": {"adv2": {"lam": "a:b"}}}, r"attacks.adv2.lam: bad λ schedule"),
    ({"attacks": {"adv2": {"grad": {"optimizer": "sgd"}}}},
     r"attacks.adv2.grad.optimizer: unknown value 'sgd'"),
    ({"attacks": {"pgd": {"optimizer": "adam"}}, "transfer": False},
     r"attacks.pgd \(cam\): PGD takes sign steps"),
    ({"attacks": {"pgd": {"steps": -1}}}, r"attacks.pgd.steps: must be ≥ 0"),
    ({"attacks": {"adv2": {"lam_search": -1}}}, r"attacks.adv2.lam_search: must be ≥ 0"),
    ({"attacks": {"pgd": {}}}, r"transfer: the transfer study needs the adv2 attack"),
    ({"detection": {"squeezers": ["bit-4"]}}, r"missing required key detection.benign_images"),
    ({"detection": {"benign_images": "b", "squeezers": ["blur-3"]}},
     r"detection.squeezers\[0\]: unknown squeezer"),
    ({"detection": {"benign_images": "b", "fpr": 1.5}}, r"detection.fpr: must be in \[0, 1\)"),
    ({"report": {"examples": 2, "dpi": 3}}, r"unknown key report.dpi"),
    ({"interpreter_settings": {"mask": {"strategy": "alt"}}},
     r"interpreter_settings.mask: 'mask' is not in interpreters"),
    ({"interpreters": ["mask"], "interpreter_settings": {"mask": {"iteration": 5}}},
     r"unknown key interpreter_settings.mask.iteration; did you mean 'iterations'"),
    ({"interpreter_settings": {"cam": 3}}, r"interpreter_settings.cam: expected a mapping"),
    ({"interpreter_settings": ["cam"]}, r"interpreter_settings: expected a mapping"),
    ({"attacks": {"adv2": {"step_search": "yes"}}}, r"attacks.adv2.step_search: expected true"),
    ({"device": "gpu0"}, r"device: .*gpu0"),
])
def test_bad_values_are_rejected_naming_the_key(change, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(BASE | change)


def test_missing_images_and_bad_files_are_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"missing required key images"):
        parse_config({"seed": 0})
    bad = tmp_path / "bad.yaml"
    bad.write_text("images: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"cannot read experiment file"):
        load_config(tmp_path / "absent.yaml")


def test_values_paths_and_overrides(tmp_path) -> None:
    path = tmp_path / "sub" / "exp.yaml"
    path.parent.mkdir()
    path.write_text("images: imgs\neps: 8/255\nattacks: {pgd: {}, adv2: {lam: 50}}\n")
    cfg = load_config(path, ["limit=3", "attacks.adv2.grad.steps=7", "detection.benign_images=b"])
    assert cfg.images == str(path.parent / "imgs") and cfg.limit == 3
    assert cfg.detection.benign_images == str(path.parent / "b")
    assert cfg.eps == pytest.approx(8 / 255)
    grad, cam = cfg.attack_config("grad", "adv2", 0), cfg.attack_config("cam", "adv2", 0)
    assert (grad.steps, grad.lam, cam.lam) == (7, "50", "50")
    assert cam.steps == 110  # unset: the pipeline's per-interpreter default
    assert cam.step_search is False and load_config(path, ["attacks.adv2.step_search=true"]) \
        .attack_config("cam", "adv2", 0).step_search is True
    mask = load_config(path, ["interpreters=[mask]", "interpreter_settings.mask.strategy=alt"])
    assert mask.interpreter_settings == {"mask": {"strategy": "alt"}}
    assert cfg.digest() != load_config(path, ["limit=4"]).digest()
    assert cfg.digest() == load_config(path, ["limit=3", "attacks.adv2.grad.steps=7",
                                              "detection.benign_images=b",
                                              "report.examples=1"]).digest()
    with pytest.raises(ConfigError, match=r"--set 'limit': expected KEY=VALUE"):
        load_config(path, ["limit"])


def test_table_formats_escape_and_round() -> None:
    table = Table("t", "T", ["name", "IoU@10%"], ["", ".3f"],
                  [["a_b & ADV²", 0.12345], ["c", None]])
    assert table.markdown().splitlines()[2:] == ["| a_b & ADV² | 0.123 |", "| c | – |"]
    assert table.csv().splitlines() == ["name,IoU@10%", "a_b & ADV²,0.12345", "c,"]
    latex = table.latex()
    assert r"name & IoU@10\% \\" in latex and r"a\_b \& ADV$^2$ & 0.123 \\" in latex
    assert "<td>a_b &amp; ADV²</td><td>0.123</td>" in table.html()


@pytest.mark.parametrize("name", ["default", "paper-resnet50", "paper-densenet169"])
def test_committed_configs_are_valid(name) -> None:
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.transfer and cfg.detection is not None and "adv2" in cfg.attacks


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


def test_run_records_every_stage_and_the_corrupt_image(tiny) -> None:
    _, run = tiny
    manifest = json.loads((run / "images.json").read_text())
    assert [i["name"] for i in manifest["images"]] == [f"img_{i}.png" for i in range(N_IMAGES)]
    assert [Path(e["file"]).name for e in manifest["load_errors"]] == ["corrupt.jpg"]
    store = Store(run)
    names = [f"img_{i}.png" for i in range(N_IMAGES)]
    stages = [f"{i}/{a}" for i in ("cam", "grad") for a in ("pgd", "adv2")]
    stages += [f"transfer/{s}-to-{t}" for s in ("cam", "grad") for t in ("cam", "grad")]
    stages += [f"detection/{s}" for s in stages[:4]]
    for stage in stages:
        records = store.records(stage, names)
        assert sorted(records) == names and all(r.error is None for r in records.values()), stage
    assert len(store.records("detection/benign", [f"img_{i}.png" for i in range(6)])) == 6

    rows = _csv(run / "report" / "results.csv")
    assert len(rows) == 4 * N_IMAGES
    successes = [int(r["success"]) for r in rows]
    assert 0 < sum(successes) < len(successes)  # a test setting where attacks can fail
    table = {(r["interpreter"], r["attack"]): r
             for r in _csv(run / "report" / "tables" / "attacks.csv")}
    for (interpreter, attack), row in table.items():
        mine = [r for r in rows if r["interpreter"] == interpreter
                and {"pgd": "PGD", "adv2": "ADV²"}[r["attack"]] == attack]
        assert len(mine) == N_IMAGES
        assert float(row["L1"]) == pytest.approx(np.mean([float(r["l1"]) for r in mine]), 1e-5)
        assert float(row["success"]) == pytest.approx(np.mean([int(r["success"]) for r in mine]))
    # the transfer diagonal re-explains the attack's own images: the attack's own numbers
    diagonal = {r["ADV² against ↓ / explained by →"]: float(r[r["ADV² against ↓ / explained by →"]])
                for r in _csv(run / "report" / "tables" / "transfer_l1.csv")}
    for interpreter in ("cam", "grad"):
        assert diagonal[interpreter] == pytest.approx(float(table[(interpreter, "ADV²")]["L1"]),
                                                      1e-5)
    errors = (run / "report" / "tables" / "errors.csv").read_text()
    assert "corrupt.jpg" in errors and errors.count("\n") == 2
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["images"] == N_IMAGES and summary["errors"] == 1


class _Page(HTMLParser):
    """Table ids with their row counts, and inline images by id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, int] = {}
        self.images: dict[str, str] = {}
        self._table: str | None = None

    def handle_starttag(self, tag, attrs) -> None:
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs["id"].removeprefix("table-")
            self.tables[self._table] = 0
        elif tag == "tr" and self._table:
            self.tables[self._table] += 1
        elif tag == "img":
            self.images[attrs["id"].removeprefix("figure-")] = attrs["src"]

    def handle_endtag(self, tag) -> None:
        if tag == "table":
            self._table = None


def test_html_report_holds_every_table_and_figure_it_claims(tiny) -> None:
    report = tiny[1] / "report"
    manifest = json.loads((report / "manifest.json").read_text())
    assert set(manifest["tables"]) == TABLES and set(manifest["figures"]) == FIGURES
    page = _Page()
    page.feed((report / "index.html").read_text())
    assert set(page.tables) == TABLES and set(page.images) == FIGURES
    for table in manifest["tables"]:
        with open(report / "tables" / f"{table}.csv") as fh:
            n_rows = sum(1 for _ in csv.reader(fh))  # header included, like the <tr> count
        assert page.tables[table] == n_rows, table
        for ext in ("md", "tex"):
            assert (report / "tables" / f"{table}.{ext}").stat().st_size > 0
    for figure, src in page.images.items():
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png == (report / "figures" / f"{figure}.png").read_bytes()
        assert Image.open(io.BytesIO(png)).size[0] > 100
    assert "http" not in (report / "index.html").read_text().replace("http-equiv", "")
    markdown = (report / "report.md").read_text()
    for table in TABLES:
        assert f"tables/{table}.csv" in markdown
    for figure in FIGURES:
        assert f"figures/{figure}.png" in markdown


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium on this machine")
def test_report_renders_in_headless_chromium(tiny, tmp_path) -> None:
    report = tiny[1] / "report" / "index.html"
    dom = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={tmp_path}", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    page = _Page()
    page.feed(dom)
    assert set(page.tables) == TABLES and set(page.images) == FIGURES
    shot = tmp_path / "page.png"
    subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu",
                    f"--user-data-dir={tmp_path}", f"--screenshot={shot}",
                    "--window-size=1200,3000", report.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert np.asarray(Image.open(shot).convert("L")).std() > 5  # something was drawn


def test_resume_after_kill_9_gives_identical_results(tiny, tmp_path) -> None:
    config, reference = tiny
    run = tmp_path / "killed"
    proc = _cli("run", str(config), "--out", str(run), "--no-progress")
    deadline = time.time() + 120
    while not list((run / "results").rglob("*.npz")) and proc.poll() is None:
        assert time.time() < deadline, "no result appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stdout.read()
    assert not (run / "report").exists()  # killed before the end
    finished = list((run / "results").rglob("*.npz"))
    assert finished
    # what a killed writer can leave: a temporary file; and a damaged record is recomputed
    (finished[0].parent / f".{finished[0].name}.12345.tmp").write_bytes(b"partial")
    finished[0].write_bytes(finished[0].read_bytes()[:100])
    untouched = {p: p.stat().st_mtime_ns for p in finished[1:]}
    proc = _cli("run", str(config), "--out", str(run), "--no-progress")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert not list(run.rglob(".*.tmp"))
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched  # finished work skipped
    assert_same_results(run, reference)
    timing = json.loads((run / "timing.json").read_text())
    assert len(timing["invocations"]) == 1  # the killed one never finished


def test_torchrun_two_processes_equal_one(tiny, tmp_path) -> None:
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is unavailable")
    config, reference = tiny
    run = tmp_path / "two"
    proc = _cli("--standalone", "--nproc_per_node=2", "-m", "adv2", "run", str(config),
                "--out", str(run), "--no-progress", launcher=("-m", "torch.distributed.run"))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert_same_results(run, reference)
    timing = json.loads((run / "timing.json").read_text())
    assert timing["invocations"][0]["processes"] == 2


def test_a_stochastic_interpreters_transfer_diagonal_is_its_attack(tmp_path) -> None:
    """SmoothGrad re-explains its ADV² images with the judge's seeds of its attack records (the
    draws of the benign maps it is compared with): the transfer table's diagonal, and each
    image's transfer L1, are the attack's own."""
    data = _tiny_config(tmp_path) | {
        "limit": 2, "interpreters": ["smoothgrad"], "detection": None,
        "interpreter_settings": {"smoothgrad": {"samples": 4}},
        "attacks": {"adv2": {"steps": 3, "warm_steps": 5}}}
    run = tmp_path / "run"
    run_experiment(parse_config(data, tmp_path), run, progress=False)
    attacked = _csv(run / "report" / "tables" / "attacks.csv")
    (row,) = _csv(run / "report" / "tables" / "transfer_l1.csv")
    assert float(row["smoothgrad"]) == pytest.approx(float(attacked[0]["L1"]), rel=1e-5)
    store = Store(run)
    for name in ("img_0.png", "img_1.png"):
        assert store.load("transfer/smoothgrad-to-smoothgrad", name).meta["l1"] == \
            pytest.approx(store.load("smoothgrad/adv2", name).meta["l1"], rel=1e-5, abs=1e-7)


def test_a_failing_sample_is_recorded_and_the_run_goes_on(tiny, tmp_path, monkeypatch) -> None:
    from adv2.experiment import runner

    real = runner.attack_unit

    def flaky(cfg, model, interpreter, attack, data, names):
        if "img_1.png" in names:
            raise RuntimeError("simulated failure")
        return real(cfg, model, interpreter, attack, data, names)

    monkeypatch.setattr(runner, "attack_unit", flaky)
    cfg = load_config(tiny[0], ["limit=2", "interpreters=[cam]", "detection=null",
                                "attacks.pgd.steps=2", "attacks.adv2.steps=1"])
    summary = run_experiment(cfg, tmp_path / "flaky", progress=False)
    assert summary["attacks"]["cam"]["adv2"]["images"] == 1
    assert summary["attacks"]["cam"]["adv2"]["errors"] == 1
    errors = _csv(tmp_path / "flaky" / "report" / "tables" / "errors.csv")
    by_stage = {(e["stage"], e["image"]): e["error"] for e in errors}
    assert by_stage[("cam/pgd", "img_1.png")] == "RuntimeError: simulated failure"
    assert by_stage[("cam/adv2", "img_1.png")] == "RuntimeError: simulated failure"
    assert "no source ADV² image for img_1.png" in by_stage[("transfer/cam-to-cam",
                                                             "img_1.png")]
    # a rerun does not retry recorded failures: the results stay as they are
    monkeypatch.setattr(runner, "attack_unit", real)
    again = run_experiment(cfg, tmp_path / "flaky", progress=False)
    assert again["attacks"] == summary["attacks"]


def test_a_different_config_is_refused_in_the_same_run_directory(tiny) -> None:
    config, reference = tiny
    with pytest.raises(ConfigError, match=r"different experiment \(changed: seed\)"):
        run_experiment(load_config(config, ["seed=1"]), reference, progress=False)


def test_a_default_that_resolves_differently_is_refused_in_the_same_run_directory(
        tiny, monkeypatch) -> None:
    """The same experiment file under changed defaults (a newer adv2) would mix images attacked
    under two settings: the resolved settings recorded in experiment.json must match."""
    from adv2.interpreters.cam import CAM

    config, reference = tiny
    cfg = load_config(config)
    recorded = json.loads((reference / "experiment.json").read_text())
    assert recorded["resolved"]["cam"]["adv2"]["lam"] == CAM.attack_defaults["lam"]
    assert recorded["resolved"]["cam"]["adv2"]["steps"] == 4  # the file's key wins
    monkeypatch.setattr(CAM, "attack_defaults", CAM.attack_defaults | {"lam": "7"})
    with pytest.raises(ConfigError, match=r"resolve differently now \(changed: cam\.adv2\.lam\)"):
        run_experiment(cfg, reference, progress=False)


def test_a_run_directory_without_resolved_settings_is_refused(tiny, tmp_path) -> None:
    config, reference = tiny
    old = tmp_path / "old"
    shutil.copytree(reference, old)
    recorded = json.loads((old / "experiment.json").read_text())
    del recorded["resolved"]
    (old / "experiment.json").write_text(json.dumps(recorded))
    with pytest.raises(ConfigError, match="did not record its resolved defaults"):
        run_experiment(load_config(config), old, progress=False)


@pytest.mark.parametrize("override, message", [
    ("images=absent", r"images: image path .*absent does not exist"),
    ("weights=absent.pth", r"model: weights file .*absent.pth does not exist"),
    ("labels=absent.csv", r"labels: file .*absent.csv does not exist"),
])
def test_missing_inputs_are_named_and_leave_no_run_directory(tiny, tmp_path, override,
                                                             message) -> None:
    with pytest.raises(ConfigError, match=message):
        run_experiment(load_config(tiny[0], [override]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_without_cuda_is_named_and_leaves_no_run_directory(tiny, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"model: device 'cuda': no CUDA device"):
        run_experiment(load_config(tiny[0], ["device=cuda"]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_each_rank_takes_its_own_gpu(monkeypatch) -> None:
    from adv2.experiment.distributed import Context

    monkeypatch.setenv("LOCAL_RANK", "3")
    assert Context(rank=7, world=8).device("cuda") == "cuda:3"
    assert Context(rank=7, world=8).device("cuda:1") == "cuda:1"
    assert Context().device("cuda") == "cuda"
    assert Context(rank=1, world=2).device("cpu") == "cpu"


def test_interpreter_settings_reach_the_interpreters(tiny, tmp_path, monkeypatch) -> None:
    from adv2.experiment import runner
    from adv2.interpreters import build_interpreter

    seen: dict[str, dict] = {}

    def build(name, model, **options):
        seen[name] = options
        if name == "grad":  # stop the run here: interpreters are built before any output
            raise ValueError("built grad")
        return build_interpreter(name, model, **options)

    monkeypatch.setattr(runner, "build_interpreter", build)
    cfg = load_config(tiny[0], ["interpreter_settings.grad.beta_end=7"])
    with pytest.raises(ConfigError, match="interpreters: built grad"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    assert seen == {"cam": {}, "grad": {"beta_end": 7}}
    assert not (tmp_path / "run").exists()


@needs_shared
def test_default_config_end_to_end_with_reduced_steps(tmp_path) -> None:
    """configs/default.yaml (the embedded EfficientNet-Lite0) on 2 images with a few steps."""
    cfg = load_config(REPO / "configs" / "default.yaml", [
        "limit=2", "attacks.pgd.steps=3", "attacks.adv2.steps=2", "attacks.adv2.warm_steps=3",
        "detection.benign_limit=3", "report.examples=2"])
    summary = run_experiment(cfg, tmp_path / "default", progress=False)
    assert summary["images"] == 2 and summary["errors"] == 0
    for interpreter in ("cam", "grad"):
        for attack in ("pgd", "adv2"):
            s = summary["attacks"][interpreter][attack]
            assert s["images"] == 2 and 0 <= s["l1_mean"] <= 1 and 0 <= s["iou_mean"] <= 1
    assert set(summary["transfer"]) == {"cam", "grad"}
    assert summary["detection"]["rates"]["benign (n=3)"] is not None
    held_out = summary["detection"]["rates"]["benign held out (3-fold)"]
    assert all(abs(3 * r - round(3 * r)) < 1e-6 for r in held_out.values())
    assert (tmp_path / "default" / "report" / "index.html").is_file()


def test_config_file_problems_are_config_errors_naming_them(tmp_path) -> None:
    from adv2.experiment.config import set_key
    path = tmp_path / "e.yaml"
    for text, message in (
            ("images: x\nseed: 1\nseed: 2\n", "the key 'seed' is given twice"),
            ("images: x\nattacks: {pgd: {steps: 1, steps: 2}}\n", "'steps' is given twice"),
            ("images: x\nseed: -1\n", "seed: must be ≥ 0"),
            ("images: x\ndetection: {benign_images: y, settings: [1]}\n",
             "detection.settings: expected a mapping")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(path)
    path.write_bytes(b"images: \xff\n")
    with pytest.raises(ConfigError, match="cannot read experiment file"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"--set seed: '\[' is not a YAML value"):
        set_key({}, "seed=[")
    path.write_text("images: x\nbase: &b {steps: 3}\nattacks: {pgd: {<<: *b, steps: 4}}\n")
    with pytest.raises(ConfigError, match="unknown key base"):  # merge keys still read
        load_config(path)


def test_a_rank_that_reads_other_images_than_rank_0_is_refused(tiny) -> None:
    from dataclasses import replace

    from adv2.experiment.images import prepare
    from adv2.experiment.runner import same_images
    from adv2.models import load_model

    cfg = load_config(tiny[0])
    data = prepare(cfg, load_model(cfg.model, cfg.weights, cfg.device))
    store = Store(tiny[1])
    same_images(store, data, 1)  # the reference run's images.json: the same images
    changed = replace(data, digests={**data.digests, "img_2.png": "0" * 16})
    with pytest.raises(ConfigError, match=r"rank 1 reads other images than rank 0 wrote to "
                                          r".*images.json: img_2.png differ"):
        same_images(store, changed, 1)
    fewer = replace(data, names=data.names[1:], paths=data.paths[1:], labels=data.labels[1:],
                    preds=data.preds[1:], targets=data.targets[1:])
    with pytest.raises(ConfigError, match=r"img_0.png differ"):
        same_images(store, fewer, 2)


def test_a_retried_attack_makes_the_records_that_read_it_anew(tiny, tmp_path,
                                                             monkeypatch) -> None:
    """An attack that failed on an image fails the transfer and detection records that read
    it (its ADV² image, its benign map);
    deleting its error record retries all of them: the rerun equals an unbroken run."""
    from adv2.experiment import runner

    config, reference = tiny
    attack_unit = runner.attack_unit

    def crashing(cfg, model, interpreter, attack, data, names):
        if (interpreter.name, attack) == ("cam", "adv2") and "img_1.png" in names:
            raise RuntimeError("a crash")
        return attack_unit(cfg, model, interpreter, attack, data, names)

    run = tmp_path / "retried"
    monkeypatch.setattr(runner, "attack_unit", crashing)
    run_experiment(load_config(config), run, progress=False)
    failed = sorted(str(p.relative_to(run)) for p in run.rglob("img_1.png.error.json"))
    assert failed == ["results/cam/adv2/img_1.png.error.json",
                      "results/detection/cam/adv2/img_1.png.error.json",
                      "results/transfer/cam-to-cam/img_1.png.error.json",
                      "results/transfer/cam-to-grad/img_1.png.error.json",
                      "results/transfer/grad-to-cam/img_1.png.error.json"]  # cam's benign map
    monkeypatch.setattr(runner, "attack_unit", attack_unit)
    (run / failed[0]).unlink()
    run_experiment(load_config(config), run, progress=False)
    assert_same_results(run, reference)
