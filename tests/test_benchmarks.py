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
    for row in report["kernel"]:
        assert set(row["max_abs_err"]) >= {"auto", "triton", "torch:cpu-flash"}
        assert all(err < 1e-4 for err in row["max_abs_err"].values())
        timing = row["backends"]["triton"]
        assert len(timing["runs_ms"]) == 3 and timing["min_ms"] <= timing["median_ms"] <= timing["max_ms"]
    assert {row["call"].split(":")[0].split(" (")[0] for row in report["shaped"]} == {
        "apb last host", "query pass", "decode"}
    assert all(check["ok"] for row in report["shaped"] for check in row["errors_vs_reference"].values())
    rows = report["simulated"]["rows"]
    assert {row["method"] for row in rows} >= {"hf-sdpa", "dense", "ring", "burst", "allgather", "ulysses", "star",
                                               "apb", "apb-balanced"}
    _check_speedups(rows, {"measured", "simulated"})
    assert "speed-up over HF SDPA" in stdout


@pytest.mark.slow
def test_gpu_first_light_smoke(tmp_path):
    """The GPU first-light script on the CPU: every backend present checked on every call kind
    (and found right), timed with a spread, the end-to-end prefill of every method; PASS."""
    report, stdout = _run("gpu_first_light.py", tmp_path / "light.json")
    assert report["smoke"] and report["verdict"] == {"passed": True, "problems": [], "unavailable": {}}
    checks = report["correctness"]
    assert {row["backend"] for row in checks} >= {"auto", "triton", "triton+tma", "torch:cpu-flash"}
    assert {row["call"] for row in checks} >= {"causal prefill", "ring step (non-causal)", "decode (split-K)",
                                              "resumed state over two key blocks", "apb anchor rule"}
    assert all(row["ok"] for row in checks)
    for row in report["speed"]:
        timing = row["backends"]["triton"]
        assert len(timing["runs_ms"]) == 3 and timing["tflops_min_max"][0] <= timing["tflops"]
    rows = report["prefill"]["rows"]
    assert {row["method"] for row in rows} >= {"hf-sdpa", "dense", "ring", "burst", "apb", "spava"}
    _check_speedups(rows, {"measured", "simulated"})
    assert "FIRST LIGHT: PASS" in stdout


def test_gpu_first_light_verdict_fails_on_a_wrong_result():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_first_light import verdict

    good = {"backend": "triton", "call": "decode", "ok": True, "max_abs_err": 0.0, "lse_max_abs_err": 0.0,
            "empty_rows_ok": True}
    assert verdict({"correctness": [good]}) == (True, [])
    bad = {**good, "ok": False, "max_abs_err": 0.5}
    passed, problems = verdict({"correctness": [good, bad], "failed_parts": {"speed": "RuntimeError: boom"},
                                "prefill": {"rows": [{"mode": "failed", "method": "apb", "hosts": 8,
                                                      "error": "ValueError: x"}]}})
    assert not passed and len(problems) == 3 and "triton wrong on decode: out err 5.00e-01" in problems[1]
    # An optional backend that cannot run here is listed, not failed; a required one fails.
    missing = {"backend": "torch:cuda-cudnn", "call": "decode", "ok": False, "error": "RuntimeError: no cuDNN"}
    assert verdict({"correctness": [good, missing]}) == (True, [])
    assert not verdict({"correctness": [good, {**missing, "backend": "auto"}]})[0]


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
    assert "spava" in {row["method"] for row in simulated}
    # Medians of three runs with their range, in the JSON and in the printed README tables.
    assert report["repeats"] == 3 and all(row["min_s"] <= row["seconds"] <= row["max_s"] for row in rows)
    assert all(row["speedup_range"][0] <= row["speedup_vs_hf"] <= row["speedup_range"][1]
               for row in rows if row["method"] != "hf-sdpa")
    assert "median of the runs (slowest-fastest)" in stdout
    assert (tmp_path / "cpu.png").exists()
    video = [row for row in rows if row["mode"] == "video local workers"]
    assert {(row["method"], row["hosts"]) for row in video} == {("hf-sdpa", 1), ("dense", 1), ("burst", 2),
                                                                ("apb", 2), ("spava", 2)}
    assert all(row["seconds"] > 0 and row["frames"] == 64 for row in video)
    dense = next(row for row in video if row["method"] == "dense")
    assert dense["same_first_token_as_hf"]  # the engine's video path agrees with transformers' forward


@pytest.mark.slow
def test_serve_cache_smoke(tmp_path):
    report, stdout = _run("serve_cache.py", tmp_path / "serve.json")
    assert report["smoke"] and "shared" in report["shared_machine"] and report["load_average_before"]
    rows = report["rows"]
    for length in {row["length"] for row in rows}:
        at = {(row["mode"], row["request"]): row for row in rows if row["length"] == length}
        hf_s = at[("measured", "hf-sdpa fresh")]["seconds"]
        assert set(at) == {("measured", "hf-sdpa fresh"), ("local workers", "fresh"), ("local workers", "follow-up"),
                           ("simulated", "fresh"), ("simulated", "follow-up")}
        for row in at.values():
            assert row["speedup_vs_hf"] == pytest.approx(hf_s / row["seconds"])
        assert at[("local workers", "follow-up")]["speedup_vs_fresh"] == pytest.approx(
            at[("local workers", "fresh")]["seconds"] / at[("local workers", "follow-up")]["seconds"])
    assert "| tokens | HF SDPA fresh |" in stdout and (tmp_path / "serve.png").exists()


@pytest.mark.slow
def test_spava_speed_smoke(tmp_path):
    """The video workload's table: spava, burst and apb at 2, 4, 8 simulated hosts against HF SDPA
    timed on the same clock, and the cumulative ablation chain at 8 hosts as the reference defines
    it (each step keeps the previous ones' options)."""
    report, stdout = _run("spava_speed.py", tmp_path / "spava.json")
    hf_s = report["hf_sdpa"]["median_s"]
    assert {(row["method"], row["hosts"]) for row in report["methods"]} == {
        (method, hosts) for method in ("spava", "burst", "apb") for hosts in (2, 4, 8)}
    for row in report["methods"] + report["ablation"]:
        assert row["speedup_vs_hf"] == pytest.approx(hf_s / row["seconds"])
        assert len(row["host_compute_s"]) == row["hosts"] and row["forwards"][0] == "vision encoder"
    steps = report["ablation"]
    assert [step["options"] for step in steps][-1] == {"overlap": False, "anchor_sharding": False, "fused_query": False,
                                                       "layout": "contiguous", "frame_parallel": False}
    assert all(set(a["options"]) <= set(b["options"]) for a, b in zip(steps, steps[1:]))
    assert [len(step["forwards_s"]) for step in steps] == [2, 2, 2, 3, 3, 3]  # nf adds the query pass
    assert steps[-1]["host_received_mb"][0] < steps[-2]["host_received_mb"][0]  # nv: no embeddings to gather
    assert set(report["spava_over_at_8_hosts"]) == {"burst", "apb"} and "ablation chain" in stdout
    assert (tmp_path / "spava.png").is_file()


# Every benchmark script the README names, and the test that runs its --smoke mode (comm_model needs
# network namespaces, so its smoke test lives with the multi-node ones).
SMOKE_TESTS = {
    "apb_ablation.py": "tests/test_apb_ablation.py",  # 8 samples at 4,096 tokens, more than --smoke
    "bench_planner.py": "test_bench_planner_smoke",
    "comm_model.py": "tests/multinode/test_comm_model.py",
    "cpu_methods.py": "test_cpu_methods_smoke",
    "gpu_first_light.py": "test_gpu_first_light_smoke",
    "gpu_suite.py": "test_gpu_suite_smoke",
    "kernel_report.py": "test_kernel_report_smoke",
    "serve_cache.py": "test_serve_cache_smoke",
    "spava_accuracy.py": "tests/test_spava_accuracy.py",  # 4 samples at 2,048 tokens, more than --smoke
    "spava_speed.py": "test_spava_speed_smoke",
}


def test_every_benchmark_the_readme_names_has_a_smoke_test():
    """A script the README tells users to run is run by `make test` in its --smoke mode (the
    planner benchmark once crashed with no test noticing)."""
    import re

    named = set(re.findall(r"benchmarks/(\w+\.py)", (REPO / "README.md").read_text()))
    assert named <= set(SMOKE_TESTS), f"README names benchmarks with no smoke test: {sorted(named - set(SMOKE_TESTS))}"
    for script, test in SMOKE_TESTS.items():
        assert "--smoke" in (REPO / "benchmarks" / script).read_text(), script
        where = REPO / test if test.startswith("tests/") else pathlib.Path(__file__)
        assert script in where.read_text() and (test.startswith("tests/") or f"def {test}(" in where.read_text())


def test_bench_planner_smoke(tmp_path):
    """The planner benchmark end to end: both plans served by one pool, each host's CPU seconds
    gathered, the answer right on both plans."""
    report, stdout = _run("bench_planner.py", tmp_path / "planner.json")
    assert report["smoke"] and set(report["plans"]) == {"equal", "auto"}
    assert all(len(hosts) == report["nproc"] for runs in report["host_cpu_s"].values() for hosts in runs)
    assert report["correct"] == {"equal": [True], "auto": [True]}
    assert report["predicted_ratio_equal_over_balanced"] > 0 and "measured ratio" in stdout


def test_kernel_report_smoke(tmp_path):
    """The kernel report's compile path on one case per arch (the full matrix is the committed report)."""
    report, stdout = _run("kernel_report.py", tmp_path / "kernels.json")
    assert report["smoke"] and {record["case"]["arch"] for record in report["records"]} == {80, 90}
    assert not report["full_matrix"]["problems"] and "compilations of 2 cases" in stdout
