"""Spava on text (tiny Llama), 1-4 simulated workers in one process, against dense.

Exact cases: one worker; no anchor with every key passed. Approximate runs: the fused query
pass equals a separate exact query pass over the same caches (same selection, same plan), and
every ablation switch runs; the fused pass is seen by counting the model's forward passes.
Planning: the zigzag pairing and its sizes. The independent layer-by-layer reference is in
tests/test_approx_reference.py.
"""

from collections import Counter
from contextlib import contextmanager

import pytest
import torch

from helpers import dense_result, relative_error, run_workers
from longctx.compare import random_prompt
from longctx.config import RunConfig
from longctx.engine import Request
from longctx.errors import LongCtxError
from longctx.models import load_model
from spava.layout import block_calls, cached_rows
from spava.method import SpavaAttention

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def llama(tiny_model):
    path = tiny_model("llama")
    return path, load_model(path, torch.device("cpu"), torch.float32)


def prompt(length, query_len=5):
    return random_prompt(256, length, query_len, seed=length)


NEW_TOKENS = 6


def spava(path, model, doc, question, world, **options):
    config = RunConfig(model=path, method="spava", **options)
    return run_workers(model, config, Request(doc, question, NEW_TOKENS, "spava", True), world)


@contextmanager
def forward_passes(model):
    """{rank: forward passes of the model's decoder} while active, counted by a hook that the
    worker threads' copies of `model` share: the prefill, a separate query pass if any, and
    one per decoding step."""
    counts = Counter()

    def count(_module, _args, kwargs):
        counts[kwargs["longctx"].rank] += 1

    handle = model.base_model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield counts
    finally:
        handle.remove()


@pytest.mark.parametrize("world,options", [
    (1, {}),
    (2, {"anchor_len": 0, "passing_len": 10**6}),
    (3, {"anchor_len": 0, "passing_len": 10**6}),
    (4, {"anchor_len": 0, "passing_len": 10**6, "anchor_sharding": 0}),
    (2, {"anchor_len": 0, "passing_len": 10**6, "layout": "contiguous", "overlap": 0}),
])
def test_exact_cases_equal_dense(llama, world, options):
    path, model = llama
    doc, question = prompt(197 + world)
    reference = dense_result(path, doc, question)
    with forward_passes(model) as passes:
        result = spava(path, model, doc, question, world, **options)
    assert relative_error(result, reference) <= TOLERANCE
    assert result.tokens == reference.tokens
    # the question ran in the prefill forward: no query pass, one forward per later token
    assert passes == {rank: NEW_TOKENS for rank in range(world)}


@pytest.mark.parametrize("world,options", [(2, {}), (3, {"anchor_sharding": 0}), (4, {"layout": "contiguous"})])
def test_fused_query_pass_equals_separate_exact_pass(llama, world, options):
    """Same plan and selection; the separate pass recomputes the question over the caches."""
    path, model = llama
    doc, question = prompt(300)
    sizes = {"anchor_len": 16, "passing_len": 8, **options}
    with forward_passes(model) as fused_passes:
        fused = spava(path, model, doc, question, world, **sizes)
    with forward_passes(model) as separate_passes:
        separate = spava(path, model, doc, question, world, fused_query=0, **sizes)
    assert fused_passes == {rank: NEW_TOKENS for rank in range(world)}  # prefill + decoding steps
    assert separate_passes == {rank: NEW_TOKENS + 1 for rank in range(world)}  # + the query pass
    assert fused.plan == separate.plan
    assert torch.allclose(fused.doc_hidden, separate.doc_hidden, atol=1e-6, rtol=0)
    err = (fused.query_hidden - separate.query_hidden).norm() / separate.query_hidden.norm()
    assert err <= 1e-5
    assert fused.tokens == separate.tokens


def test_approximate_run_is_close_and_reports(llama):
    path, model = llama
    doc, question = prompt(400)
    reference = dense_result(path, doc, question)
    result = spava(path, model, doc, question, 4, anchor_len=32, passing_len=16)
    assert relative_error(result, reference) < 0.5
    plan = result.plan
    assert plan["virtual_blocks"] == [[0, 7], [1, 6], [2, 5], [3, 4]]
    assert plan["passing_tokens"] == [16] * 7 + [0]
    per_token = 2 * 2 * 16 * 4  # K and V, 2 KV heads, head dim 16, fp32
    assert result.stats.passing_bytes_per_layer == per_token * 16 * 7


def planner(**options):
    return SpavaAttention.planner_for(RunConfig(method="spava", **options))


def test_plan_pairs_virtual_blocks_and_sizes():
    plan = planner().plan(8192, 20, 4)
    assert plan.details["anchor_len"] == 128 and plan.details["passing_len"] == 64  # n/64, n/128
    sizes = plan.details["virtual_block_sizes"]
    assert len(sizes) == 8 and sum(sizes) == 8192 - 128
    for host in plan.hosts:
        assert host.virtual == (host.rank, 7 - host.rank)
        assert host.passing == (64 * host.rank, 64 * (7 - host.rank))
        assert len(host.shard) == 32
    estimates = plan.estimates()
    assert max(estimates) / min(estimates) < 1.05  # the pairing balances the passing work
    contiguous = planner(layout="contiguous").plan(8192, 20, 4)
    assert [host.virtual for host in contiguous.hosts] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert contiguous.critical_ms > plan.critical_ms


def test_block_calls_follow_the_layout():
    plan = planner(anchor_len=10, passing_len=3).plan(50, 4, 2)
    host = plan.hosts[1]  # blocks v1 = 20..29 and v2 = 30..39 after a 10-token anchor
    first, second = block_calls(host)
    assert (first.q_rows, first.passing, first.anchor_len) == (slice(0, 20), 3, 10)
    assert (second.q_rows, second.k_rows, second.passing) == (slice(20, 30), (slice(0, 10), slice(20, 30)), 6)
    assert cached_rows(host) == list(range(5, 10)) + list(range(10, 30))
    assert host.positions() == list(range(5, 10)) + list(range(20, 40))


def test_too_short_document_is_one_clear_error():
    with pytest.raises(LongCtxError, match="too short for 4 workers"):
        planner(anchor_len=10).plan(16, 4, 4)
