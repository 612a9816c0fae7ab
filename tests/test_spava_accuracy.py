"""Spava's accuracy table, small, on the shipped video model: the README's benchmark
(`benchmarks/spava_accuracy.py`, whose every length is one `longctx eval` run) on the first
SAMPLES of the committed run's samples at 2,048 tokens answers exactly as the committed run did
(benchmarks/results/spava_accuracy_vn_qwen_vl.json), and the ordering that run showed holds.
This is also the script's run in `make test` (more than its --smoke mode asks).

The video needle questions need what every host's frames hold (which colour came first, how many
symbols were shown): the exact method keeps dense's answers, Spava (anchor plus query-aware
passing) keeps them, and Spava without passing (each block sees only the anchor and itself)
loses answers whose needles lie in other hosts' blocks."""

import contextlib
import io
import json
import os
import sys

from helpers import REPO

MODEL = os.path.join(REPO, "examples", "models", "vn-qwen-vl")
COMMITTED = os.path.join(REPO, "benchmarks", "results", "spava_accuracy_vn_qwen_vl.json")
LENGTH = "2048"
SAMPLES = 4


def _committed():
    with open(COMMITTED) as handle:
        return json.load(handle)


def test_committed_table_shows_what_passing_is_for():
    """The full run's ordering (every length, every task together): burst equals dense answer
    for answer; spava is within a sample per task of dense; spava without passing loses more."""
    results = _committed()
    assert results["model"] == "examples/models/vn-qwen-vl" and results["hosts"] == 4
    for length, run in results["lengths"].items():
        assert run["command"].startswith("longctx eval --model examples/models/vn-qwen-vl"), length
        rows = run["rows"]
        right = {row: sum(sum(flags) for flags in rows[row]["correct"].values()) for row in rows}
        assert rows["burst"]["predictions"] == rows["dense"]["predictions"], length  # exact
        assert right["spava"] >= right["dense"] - len(results["tasks"]), length
        assert right["spava"] > right["spava (no passing)"], length


def test_small_run_answers_as_the_committed_run(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from spava_accuracy import main

    out = tmp_path / "accuracy.json"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = main(["--lengths", LENGTH, "--samples", str(SAMPLES), "--out", str(out)])
    assert status == 0 and (tmp_path / "accuracy.png").is_file()
    run = json.loads(out.read_text())["lengths"][LENGTH]
    committed = _committed()["lengths"][LENGTH]
    assert run["command"].replace(f"--samples {SAMPLES}", "") == committed["command"].replace(
        f"--samples {_committed()['samples']}", "")
    for row, result in run["rows"].items():
        for task, predictions in result["predictions"].items():
            assert predictions == committed["rows"][row]["predictions"][task][:SAMPLES], (row, task)
    rows = run["rows"]
    assert rows["burst"]["predictions"] == rows["dense"]["predictions"]  # exact
    ordering = {row: sum(result["correct"]["video_ordering"]) for row, result in rows.items()}
    assert ordering["spava"] == ordering["dense"] > ordering["spava (no passing)"]
