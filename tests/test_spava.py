"""Spava on text (tiny Llama), 1-4 simulated workers in one process, against dense.

Exact cases: one worker; no anchor with every key passed. Approximate runs: the fused query
pass equals a separate exact query pass over the same caches (same selection, same plan), and
every ablation switch runs; the fused pass is seen by counting the model's forward passes.
Planning: the zigzag pairing, the reference's sizes and its ablations (`--no-overlap`,
`--no-anchor-sharding`, `--no-fused-query`, `--layout contiguous`) checked on the plan and the
work the planner counts. The independent layer-by-layer reference is in
tests/test_approx_reference.py.
"""

from collections import Counter
from contextlib import contextmanager
from dataclasses import replace

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
    (3, {"anchor_len": 0, "passing_len": 10**6, "fused_query": 0}),
])
def test_exact_cases_equal_dense(llama, world, options):
    path, model = llama
    doc, question = prompt(197 + world)
    reference = dense_result(path, doc, question)
    with forward_passes(model) as passes:
        result = spava(path, model, doc, question, world, **options)
    assert relative_error(result, reference) <= TOLERANCE
    assert result.tokens == reference.tokens
    # with the question in the prefill forward no query pass runs: one forward per later token;
    # --no-fused-query prefills without it and adds the query pass
    query_pass = 0 if options.get("fused_query", 1) else 1
    assert passes == {rank: NEW_TOKENS + query_pass for rank in range(world)}


@pytest.mark.parametrize("world,options", [(2, {}), (3, {"anchor_sharding": 0}), (4, {"layout": "contiguous"})])
def test_fused_query_pass_equals_separate_exact_pass(llama, world, options):
    """`--query-pass` (ours): same plan and selection; the separate pass recomputes the question
    over the caches."""
    path, model = llama
    doc, question = prompt(300)
    sizes = {"anchor_len": 16, "passing_len": 8, **options}
    with forward_passes(model) as fused_passes:
        fused = spava(path, model, doc, question, world, **sizes)
    with forward_passes(model) as separate_passes:
        separate = spava(path, model, doc, question, world, query_pass=1, **sizes)
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
    assert plan.details["anchor_len"] == 128 and plan.details["passing_len"] == 128  # n/64, n/128 up to 128
    sizes = plan.details["virtual_block_sizes"]
    assert len(sizes) == 8 and sum(sizes) == 8192 - 128
    for host in plan.hosts:
        assert host.virtual == (host.rank, 7 - host.rank)
        assert host.passing == (128 * host.rank, 128 * (7 - host.rank))
        assert len(host.shard) == 32
    estimates = plan.estimates()
    assert max(estimates) / min(estimates) < 1.05  # the pairing balances the passing work


@pytest.mark.parametrize("doc_len,anchor,passing", [(20_000, 384, 256), (131_072, 2048, 1024), (8_191, 128, 128),
                                                    (127, 127 - 8, 0), (63, 0, 0)])
def test_default_sizes_round_up_to_128_as_the_reference_does(doc_len, anchor, passing):
    """The reference (`modeling_qwen2_5_vl_apbvz.py`): anchor = 128 * ceil((n // 64) / 128),
    passing = 128 * ceil((n // 128) / 128); a document too short for that anchor keeps 2
    tokens per worker after it."""
    plan = planner().build(doc_len, 5, 4)
    assert (plan.details["anchor_len"], plan.details["passing_len"]) == (anchor, passing)
    assert planner(size_tile=64).build(20_000, 5, 4).details["anchor_len"] == 320


def work(**options):
    """{rank: HostWork} of an 8-host plan of 16,384 tokens and a 40-token question."""
    plan_of = planner(**options)
    plan = plan_of.plan(16384, 40, 8)
    return plan, {host.rank: plan_of.host_work(plan, host) for host in plan.hosts}


def test_no_overlap_only_stops_the_overlap():
    """The reference's `no`: the same transfers, each waited for at once."""
    (plan, spava), (plain, no) = work(), work(overlap=False)
    assert [host.spans for host in plan.hosts] == [host.spans for host in plain.hosts]
    assert plain.critical_ms > plan.critical_ms  # the transfers are exposed
    for rank in spava:
        assert spava[rank].overlapped and not no[rank].overlapped
        assert replace(no[rank], overlapped=True) == spava[rank]


def test_no_anchor_sharding_moves_the_anchor_to_host_0():
    """The reference's `na`: host 0 caches (and the question attends) the whole anchor, the others
    none of it; nothing else changes."""
    (plan, sharded), (whole, single) = work(overlap=False), work(overlap=False, anchor_sharding=False)
    anchor, heads = plan.details["anchor_len"], planner().cost_model().shape.heads
    assert [len(host.shard) for host in plan.hosts] == [anchor // 8] * 8
    assert [len(host.shard) for host in whole.hosts] == [anchor] + [0] * 7
    for rank in sharded:
        moved = (anchor - anchor // 8) if rank == 0 else -(anchor // 8)
        assert single[rank].head_pairs - sharded[rank].head_pairs == moved * 40 * heads  # question rows x query heads
        assert single[rank].rows == sharded[rank].rows and single[rank].recv_bytes == sharded[rank].recv_bytes


def test_no_fused_query_prefills_without_the_question():
    """The reference's `nf`: no question rows in the prefill, no question call, no (out, lse)
    all-gather (the query pass runs after); the same keys are scored and passed."""
    (plan, fused), (_, unfused) = work(anchor_sharding=False), work(anchor_sharding=False, fused_query=False)
    shape = planner().cost_model().shape
    for rank in fused:
        assert fused[rank].rows - unfused[rank].rows == 40
        assert fused[rank].recv_bytes - unfused[rank].recv_bytes == 7 * 40 * shape.heads * (shape.head_dim + 1) * 4
        assert fused[rank].messages - unfused[rank].messages == 7
        assert fused[rank].scored_keys == unfused[rank].scored_keys
    unfused_method = SpavaAttention(RunConfig(method="spava", fused_query=False))
    ids, positions = unfused_method.local_inputs(plan, 3, list(range(16384)), [7] * 40)
    assert len(ids) == plan.hosts[3].local_len and max(positions) < 16384
    assert unfused_method.query_rows(plan, 3) is None
    end = plan.hosts[3].local_len
    assert SpavaAttention(RunConfig(method="spava")).query_rows(plan, 3) == slice(end, end + 40)


def test_contiguous_layout_is_one_block_per_host_with_twice_the_passing():
    """The reference's `nz`: W blocks of (n - a) / W, host r holding block r, each passing 2 l_p
    (so a host passes as many keys as with its two zigzag blocks), in one all-gather per layer."""
    (zig, zig_work), (plan, flat) = work(fused_query=False), work(fused_query=False, layout="contiguous")
    anchor, passing = zig.details["anchor_len"], zig.details["passing_len"]
    assert plan.details["anchor_len"] == anchor and plan.details["passing_len"] == 2 * passing
    assert [host.virtual for host in plan.hosts] == [(rank,) for rank in range(8)]
    assert plan.details["virtual_block_sizes"] == [(16384 - anchor) // 8] * 8
    assert plan.details["passing_tokens"] == [2 * passing] * 7 + [0]
    assert [host.passing for host in plan.hosts] == [(2 * passing * rank,) for rank in range(8)]
    assert [len(block_calls(host)) for host in plan.hosts] == [1] * 8
    for rank in flat:
        assert zig_work[rank].messages == 2 * 7 and flat[rank].messages == 7
        assert flat[rank].recv_bytes == zig_work[rank].recv_bytes  # the same keys, in one gather
    assert max(plan.estimates()) > max(zig.estimates())  # host 7 sees all passed keys: imbalanced


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
