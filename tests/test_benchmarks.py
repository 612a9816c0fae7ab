"""The benchmark scripts run end to end in their smoke modes (tiny shapes, CPU) and report
what they claim to: every method against HF SDPA measured in the same run. No timing is asserted."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(script, out, *extra):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("TRITON_INTERPRET", None)  # the scripts choose for themselves
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--smoke", "--out", str(out), *extra],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


def _check_speedups(rows, modes):
    """Every row's speed-up is HF SDPA's seconds (same length; same mode when it has its own
    baseline, else the measured one) over the row's seconds."""
    baselines = {(row["length"], row["mode"]): row["seconds"] for row in rows if row["method"] == "hf-sdpa"}
    for row in rows:
        hf_s = baselines.get((row["length"], row["mode"])) or baselines[(row["length"], "measured")]
        assert row["speedup_vs_hf"] == pytest.approx(hf_s / row["seconds"])
    assert {row["mode"] for row in rows} == modes


@pytest.mark.slow
def test_gpu_suite_smoke(tmp_path):
    report, stdout = _run("gpu_suite.py", tmp_path / "gpu.json")
    assert report["smoke"] and "modelled" in report["simulated"] and "measured" in report
    assert all(row["max_abs_err"] < 1e-4 for row in report["kernel"])
    assert {row["call"].split(":")[0].split(" (")[0] for row in report["shaped"]} == {
        "apb last host", "query pass", "decode"}
    assert all(row["max_abs_err_vs_reference"] < 1e-4 for row in report["shaped"])
    rows = report["simulated"]["rows"]
    assert {row["method"] for row in rows} >= {"hf-sdpa", "dense", "ring", "burst", "allgather", "ulysses", "star",
                                               "apb", "apb-balanced"}
    _check_speedups(rows, {"measured", "simulated"})
    assert "speed-up over HF SDPA" in stdout


@pytest.mark.slow
def test_cpu_methods_smoke(tmp_path):
    report, stdout = _run("cpu_methods.py", tmp_path / "cpu.json")
    assert "measured" in report and "modelled" in report and report["link"]["gb_per_s"] > 0
    rows = report["rows"]
    local = [row for row in rows if row["mode"] == "local workers" and row["method"] != "hf-sdpa"]
    assert local and all(row["threads_per_worker"] >= 1 and row["cores"] >= 1 for row in local)
    _check_speedups(rows, {"measured", "simulated", "local workers", "video local workers"})
    simulated = [row for row in rows if row["mode"] == "simulated"]
    assert all(len(row["host_compute_s"]) == row["hosts"] for row in simulated)
    assert (tmp_path / "cpu.png").exists()
    video = [row for row in rows if row["mode"] == "video local workers"]
    assert {(row["method"], row["hosts"]) for row in video} == {("hf-sdpa", 1), ("dense", 1), ("burst", 2),
                                                                ("apb", 2), ("spava", 2)}
    assert all(row["seconds"] > 0 and row["frames"] == 64 for row in video)
    dense = next(row for row in video if row["method"] == "dense")
    assert dense["same_first_token_as_hf"]  # the engine's video path agrees with transformers' forward
