"""APB (query, random and retaining-heads compressors), Star and Spava on real worker
processes (gloo over loopback: padded all-gathers, asynchronous gathers) against the same
independent references as tests/test_approx_reference.py, within 1e-5.

One pool of 3 processes runs every case (start-up dominates: ~20-30 s on 2 busy cores).
"""

import multiprocessing
import os

import pytest
import torch

from apb.heads import RetainingHeads
from approx_reference import TOLERANCE, Spy, apb_errors, gloo_worker, spava_errors, spava_flags
from longctx.compare import random_prompt
from longctx.models import check_model_dir

WORLD, DOC_LEN, QUERY_LEN, NEW_TOKENS = 3, 300, 5, 3
CASES = {  # name -> (method, options)
    "apb-query": ("apb", {}),
    "apb-probe": ("apb", {"anchor_len": 0, "passing_len": 20}),
    "apb-random": ("apb", {"compressor": "random"}),
    "apb-retaining-heads": ("apb", {"compressor": "retaining-heads"}),
    "star": ("star", {"anchor_len": 24}),
    "spava": ("spava", {"anchor_len": 16, "passing_len": 8}),
    "spava-unfused": ("spava", {"anchor_len": 16, "passing_len": 8, "fused_query": 0, "overlap": 0}),
    "spava-nz": ("spava", {"anchor_len": 16, "passing_len": 8, "layout": "contiguous", "query_pass": 1}),
}


@pytest.fixture(scope="module")
def gloo_runs(tiny_model, tmp_path_factory):
    """{case: (Spy merged over the 3 processes, doc, question)}."""
    path = tiny_model("llama")
    work = tmp_path_factory.mktemp("gloo-reference")
    heads = str(work / "heads.safetensors")
    with torch.random.fork_rng():
        torch.manual_seed(7)
        RetainingHeads.for_model(check_model_dir(path), hidden=16).save(heads)
    doc, question = random_prompt(256, DOC_LEN, QUERY_LEN, seed=DOC_LEN)
    jobs = []
    for name, (method, options) in CASES.items():
        if options.get("compressor") == "retaining-heads":
            options = dict(options, retaining_heads=heads)
        jobs.append((name, method, options, doc, question, NEW_TOKENS))
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=gloo_worker, args=(rank, WORLD, str(work / "rendezvous"), path, jobs, str(work)))
             for rank in range(WORLD)]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join(timeout=300)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert [proc.exitcode for proc in procs] == [0] * WORLD
    states = [torch.load(os.path.join(work, f"rank{rank}.pt"), weights_only=False) for rank in range(WORLD)]
    return {name: (Spy.merge(state[name] for state in states), doc, question) for name in CASES}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_real_processes_match_the_independent_reference(gloo_runs, case):
    spy, doc, question = gloo_runs[case]
    method, options = CASES[case]
    assert sorted(spy.inputs) == list(range(WORLD))
    if method == "spava":
        errors = spava_errors(spy, doc, question, **spava_flags(options))
    else:
        errors = apb_errors(spy, doc, question)
    assert max(errors.values()) <= TOLERANCE, errors
