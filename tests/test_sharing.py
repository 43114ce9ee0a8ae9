"""Runs that share a folder: one holder at a time (a live one refuses the next, a stale lock is
taken over), and Ctrl-C or SIGTERM ends with one line, the records kept and the lock released,
so that the same command resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, make_images, make_tiny_model
from PIL import Image

from adv2 import cli, pipeline
from adv2.experiment import runner
from adv2.interrupts import Terminated
from adv2.lock import NAME, FolderBusy, FolderLock

#: ``adv2 attack`` on the tiny model, each batch slowed down (a window for SIGTERM)
SLOW_ATTACK = """
import sys, time
from conftest import make_tiny_model
from adv2 import cli, pipeline
model = make_tiny_model(0, 1000)
cli.attack.load_model = lambda *args: model
real = pipeline.attack_batch
def slow(*args):
    time.sleep(0.5)
    return real(*args)
pipeline.attack_batch = slow
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture
def tiny1000(monkeypatch):
    model = make_tiny_model(0, 1000)
    monkeypatch.setattr(cli.attack, "load_model", lambda *args: model)
    monkeypatch.setattr(runner, "load_model", lambda *args: model)
    return model


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, picture in enumerate(make_images(4, seed=2, size=32)):
        Image.fromarray(picture).save(folder / f"n01440764_{i}.png")
    return folder


def _args(images: Path, out: Path) -> list[str]:
    return ["attack", "--images", str(images), "--out", str(out), "--interpreter", "cam",
            "--attack", "pgd", "--steps", "2", "--batch-size", "1", "--seed", "0"]


def _python(*args: str) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")}
    return subprocess.Popen([sys.executable, *args], env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _write_lock(folder: Path, pid: int) -> None:
    folder.mkdir(parents=True)
    (folder / NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                           "started": "2024-01-01T00:00:00+00:00"}))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_holder_is_refused_naming_it(tmp_path, images, tiny1000, caplog) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "out"
        _write_lock(out, sleeper.pid)
        held = (out / NAME).read_text()
        assert cli.main(_args(images, out)) == 2
        assert f"{out} is in use by process {sleeper.pid} on {socket.gethostname()}" \
            in caplog.text
        assert "Traceback" not in caplog.text
        assert sorted(p.name for p in out.iterdir()) == [NAME]  # nothing written
        assert (out / NAME).read_text() == held
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"images": str(images), "interpreters": ["cam"],
                                          "attacks": {"pgd": {"steps": 1}}, "transfer": False,
                                          "image_size": 32}))
        assert cli.main(["run", str(config), "--out", str(out), "--no-progress"]) == 2
        assert sorted(p.name for p in out.iterdir()) == [NAME]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_holding_process_is_refused_and_its_lock_stale_once_killed(tmp_path, caplog) -> None:
    folder = tmp_path / "out"
    holder = _python("-c", "import sys, time\nfrom adv2.lock import FolderLock\n"
                           f"with FolderLock({str(folder)!r}):\n"
                           "    print('held', flush=True)\n    time.sleep(60)\n")
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy, match=f"in use by process {holder.pid} "):
            FolderLock(folder).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert (folder / NAME).is_file()  # killed: its lock file stays, no longer held
    with FolderLock(folder):
        assert json.loads((folder / NAME).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of process {holder.pid}" in caplog.text
    assert not (folder / NAME).exists()


def test_a_stale_lock_is_taken_over_and_a_finished_run_leaves_none(tmp_path, images, tiny1000,
                                                                   caplog) -> None:
    out = tmp_path / "out"
    dead = _dead_pid()
    _write_lock(out, dead)
    assert cli.main(_args(images, out)) == 0
    assert f"taking over the lock of process {dead}" in caplog.text
    assert not (out / NAME).exists()
    assert len(list((out / "records").glob("*.npz"))) == 4


def test_ctrl_c_keeps_the_records_and_the_same_command_resumes(tmp_path, images, tiny1000,
                                                               monkeypatch, capsys) -> None:
    reference = tmp_path / "reference"
    assert cli.main(_args(images, reference)) == 0
    real, calls = pipeline.attack_batch, []

    def interrupted(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(pipeline, "attack_batch", interrupted)
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli.main(_args(images, out)) == 130
    err = capsys.readouterr().err
    assert err.endswith(f"interrupted: 1 of 4 images done in {out}; the same command resumes\n")
    assert "Traceback" not in err
    assert len(list((out / "records").glob("*.npz"))) == 1
    assert not (out / NAME).exists()
    monkeypatch.setattr(pipeline, "attack_batch", real)
    assert cli.main(_args(images, out)) == 0
    assert (out / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()


def test_sigterm_ends_with_one_line_and_the_same_command_resumes(tmp_path, images,
                                                                 tiny1000) -> None:
    out = tmp_path / "out"
    proc = _python("-c", SLOW_ATTACK, *_args(images, out))
    deadline = time.time() + 120
    while not list((out / "records").glob("*.npz")) and proc.poll() is None:
        assert time.time() < deadline, "no record appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, text
    done = len(list((out / "records").glob("*.npz")))
    assert 1 <= done < 4
    assert text.splitlines()[-1] == (f"interrupted: {done} of 4 images done in {out}; the same "
                                     "command resumes")
    assert "Traceback" not in text
    assert not (out / NAME).exists()
    assert cli.main(_args(images, out)) == 0
    assert len(list((out / "records").glob("*.npz"))) == 4


def test_an_interrupted_experiment_names_its_stage_and_resumes(tmp_path, images, tiny1000,
                                                               monkeypatch, capsys) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"images": str(images), "interpreters": ["cam"],
                                      "attacks": {"pgd": {"steps": 1}}, "transfer": False,
                                      "image_size": 32}))
    real, calls = runner.attack_unit, []

    def terminated(*args):
        calls.append(args)
        if len(calls) == 3:
            raise Terminated
        return real(*args)

    monkeypatch.setattr(runner, "attack_unit", terminated)
    run = tmp_path / "run"
    command = ["run", str(config), "--out", str(run), "--no-progress"]
    assert cli.main(command) == 143
    assert capsys.readouterr().err.endswith(
        f"interrupted in cam/pgd: 2 of 4 images done in {run}; the same command resumes\n")
    assert not (run / NAME).exists() and not (run / "report").exists()
    monkeypatch.setattr(runner, "attack_unit", real)
    assert cli.main(command) == 0
    assert len(list((run / "results" / "cam" / "pgd").glob("*.npz"))) == 4
    assert not (run / NAME).exists()
