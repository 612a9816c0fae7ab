"""APB's ablation, small, on the shipped variable-tracking model: the README's benchmark
(`benchmarks/apb_ablation.py`, whose every length is one `longctx eval` run), on the first 8 of
the committed run's 20 samples, answers exactly as the committed run did
(benchmarks/results/apb_ablation_vt_llama.json), and the ordering that run showed holds. This is
also the script's run in `make test` (more than its --smoke mode asks).

The task needs what an earlier host's block holds (one hop: "The value of B is the value of
A." on a later host than "The value of A is 42."): exact methods keep dense's answers, the
learned retaining heads keep (nearly) all of them and the query-aware compressor most, while
random passing and no passing lose them; StarAttention (no passing, the first block as every
host's anchor) keeps only the samples whose definition lies in that first block."""

import contextlib
import io
import json
import os
import sys

from helpers import REPO

VT_MODEL = os.path.join(REPO, "examples", "models", "vt-llama")
COMMITTED = os.path.join(REPO, "benchmarks", "results", "apb_ablation_vt_llama.json")
TASK = "variable_tracking[num-hops=1]"
HEADS = os.path.join(REPO, "benchmarks", "results", "vt_llama_heads.safetensors")
ROWS = {"dense": "dense", "apb (query)": "apb[compressor=query]",
        "apb (retaining-heads)": f"apb[compressor=retaining-heads,retaining-heads={HEADS}]",
        "apb (random)": "apb[compressor=random]", "apb (no passing)": "apb[passing-len=0]", "star": "star",
        "burst": "burst"}
SAMPLES = 8


def test_passing_is_what_the_cross_block_task_needs(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from apb_ablation import main

    out = tmp_path / "ablation.json"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = main(["--tasks", TASK, "--lengths", "4096", "--hosts", "4", "--samples", str(SAMPLES),
                       "--seed", "0", "--rows", ",".join(ROWS), "--retaining-heads", HEADS, "--out", str(out)])
    assert status == 0
    run = json.loads(out.read_text())["lengths"]["4096"]
    assert run["command"].startswith("longctx eval --model examples/models/vt-llama") and "--balance equal" in run["command"]
    predictions = {spec: run["rows"][row]["predictions"][TASK] for row, spec in ROWS.items()}
    with open(COMMITTED) as handle:
        committed = json.load(handle)["lengths"]["4096"]["rows"]
    for row, spec in ROWS.items():
        assert predictions[spec] == committed[row]["predictions"][TASK][:SAMPLES], row
    right = {row: sum(committed[row]["correct"][TASK][:SAMPLES]) for row in ROWS}
    assert right["burst"] == right["dense"] and predictions["burst"] == predictions["dense"]  # exact
    no_passing = max(right["apb (random)"], right["apb (no passing)"])
    assert right["dense"] >= right["apb (retaining-heads)"] >= right["apb (query)"] > right["star"] > no_passing
    assert right["dense"] - no_passing >= 5
