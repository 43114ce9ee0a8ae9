"""benchmarks/gpu_check.py end to end on the CPU in its smoke mode (the tiny ``adv2 run``, a
probe test through pytest, the timing, the page), and its finiteness check."""

from __future__ import annotations

from conftest import load_file

from adv2.benchmarking.pages import table_rows


def test_the_gpu_check_runs_end_to_end_in_its_smoke_mode(tmp_path) -> None:
    gpu_check = load_file("benchmarks/gpu_check.py")
    probe = tmp_path / "test_probe.py"
    probe.write_text("def test_probe() -> None:\n    pass\n")
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--device", "cpu", "--smoke", "--images", str(tmp_path / "none"),
                           "--tests", str(probe), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# GPU check\n\nCommand: `python benchmarks/gpu_check.py --device")
    assert f"`python -m pytest -q -rs {probe}`: 1 passed" in text
    rows = table_rows(text)
    checks = rows[rows.index(["output", "present", "finite"]) + 1:][:7]
    assert [r[0] for r in checks][:2] == ["exit code 0", "report/tables/attacks.csv"]
    assert all(r[1] == "yes" and r[2] in ("yes", "–") for r in checks)
    header = rows.index(["interpreter", "attack", "CPU s / batch", "cpu s / batch",
                         "speed-up", "passes / image"])
    timing = rows[header + 1:]
    assert [(r[0], r[1]) for r in timing] == [("cam", "PGD"), ("cam", "ADV²"),
                                              ("grad", "PGD"), ("grad", "ADV²")]
    assert all(float(r[2]) > 0 and float(r[4]) == 1.0 for r in timing)


def test_the_finiteness_check_finds_a_non_finite_cell(tmp_path) -> None:
    gpu_check = load_file("benchmarks/gpu_check.py")
    path = tmp_path / "t.csv"
    path.write_text("name,value\na,0.5\nb,\nc,text\n")
    assert gpu_check.finite_csv(path)
    path.write_text("name,value\na,nan\n")
    assert not gpu_check.finite_csv(path)
