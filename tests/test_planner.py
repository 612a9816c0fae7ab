"""The host-side planner: cost model, balancing, Spava pairing, `longctx plan`, and uneven plans on the engine.

Pure-planner tests need no workers. Uneven plans run in one process (worker threads with an
in-process Comm, `helpers.ThreadComm`) against dense, and once on a real 2-worker pool.
"""

import json
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from longctx.api import LongContextLM
from longctx.cli import main as cli_main
from longctx.compare import random_prompt
from longctx.config import RunConfig
from longctx.costmodel import CostModel, HostWork, KernelCall, ModelShape
from longctx.costs import CostCoefficients, load_costs, save_costs
from longctx.engine import Request
from longctx.errors import LongCtxError
from longctx.kernels.reference import _visibility
from longctx.models import load_model
from longctx.layouts import ZIGZAG
from longctx.plan import Span, balanced_block_sizes, round_boundaries, split_sizes
from longctx.plan_report import shape_config
from longctx.registry import get_method
from helpers import REPO, dense_result, relative_error, run_workers

SHAPE = ModelShape()  # Llama-3.1-8B: 32 heads, 8 KV heads
MODEL_CONFIG = shape_config(SHAPE)
METHODS = ["dense", "ring", "burst", "ulysses", "allgather", "apb", "star"]


@pytest.fixture(autouse=True)
def no_calibrated_costs(tmp_path, monkeypatch):
    """Plans use the shipped coefficients unless a test says otherwise (no ~/.cache leaking in)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def causal_pairs(spans):
    """Sum over owned positions p of (p + 1): the keys a causal query at p sees in the whole document."""
    return sum(pos + 1 for span in spans for pos in span.positions())


def make_plan(method, doc_len, world, query_len=16, **options):
    """(method object, plan) through the same steps as the engine: check, use_model, plan."""
    runner = get_method(method, RunConfig(method=method, nproc=world, device="cpu", **options).validate())
    runner.check(MODEL_CONFIG, world)
    runner.use_model(MODEL_CONFIG)
    return runner, runner.plan(doc_len, query_len, world)


# ---------------------------------------------------------------------------------------------
# Balancing primitives


@settings(max_examples=80, deadline=None)
@given(doc_len=st.integers(1, 2**20), world=st.integers(1, 16), tile=st.sampled_from([1, 16, 64, 128]),
       slopes=st.lists(st.floats(0.1, 10), min_size=16, max_size=16))
def test_balanced_sizes_cover_the_document_and_equalise_linear_costs(doc_len, world, tile, slopes):
    if doc_len < world:
        with pytest.raises(LongCtxError, match=f"too short for {world} workers"):
            balanced_block_sizes(doc_len, world, lambda rank, start, size: size, tile=tile)
        return
    sizes = balanced_block_sizes(doc_len, world, lambda rank, start, size: slopes[rank] * size, tile=tile)
    assert len(sizes) == world and sum(sizes) == doc_len and min(sizes) >= 1
    times = [slopes[rank] * size for rank, size in enumerate(sizes)]
    # each host is within one tile (plus one token) of the common time
    slack = max(slopes[:world]) * (tile + 1)
    assert max(times) - min(times) <= 2 * slack + 1e-9


def test_speeds_and_tiles():
    sizes = balanced_block_sizes(1000, 4, lambda rank, start, size: size, speeds=[1, 1, 2, 0.5])
    assert sizes == [222, 222, 445, 111]
    assert balanced_block_sizes(4096, 4, lambda rank, start, size: size, tile=64) == [1024] * 4
    assert balanced_block_sizes(5, 5, lambda rank, start, size: size * (rank + 1)) == [1] * 5
    assert round_boundaries([100, 100, 100], 64) == [128, 64, 108]
    assert round_boundaries([10, 10, 10], 64) == [10, 10, 10]  # rounding would empty a block
    with pytest.raises(LongCtxError, match="gives 2 speeds for 3 workers"):
        balanced_block_sizes(100, 3, lambda rank, start, size: size, speeds=[1, 1])
    with pytest.raises(LongCtxError, match="must all be positive"):
        balanced_block_sizes(100, 2, lambda rank, start, size: size, speeds=[1, 0])


def test_causal_ring_cost_gives_the_first_host_the_most_tokens():
    sizes = balanced_block_sizes(10000, 4, lambda rank, start, size: KernelCall(size, start + size).visible)
    assert sizes[0] > sizes[1] > sizes[2] > sizes[3] and sum(sizes) == 10000
    assert sizes[0] == pytest.approx(5000, rel=0.01)  # pairs grow as the square of the end position


# ---------------------------------------------------------------------------------------------
# Zigzag pairing of virtual blocks (r, 2H-1-r)


@pytest.mark.parametrize("world", [1, 2, 3, 8, 16])
def test_zigzag_pairs_virtual_blocks_r_and_2h_minus_1_minus_r(world):
    pairs = ZIGZAG.pairs(world)
    assert [first for first, _ in pairs] == list(range(world))
    assert all(first + second == 2 * world - 1 for first, second in pairs)
    assert sorted(block for pair in pairs for block in pair) == list(range(2 * world))
    hosts = ZIGZAG.virtual_blocks(64 * world + 5, world, start=100)
    owned = sorted(pos for spans in hosts for span in spans for pos in span.positions())
    assert owned == list(range(100, 100 + 64 * world + 5))
    assert all(first.stop <= second.start for first, second in hosts)


def test_zigzag_pairing_balances_passing_work():
    """Virtual block v receives v * l_p passing keys: pairs (r, 2H-1-r) all do the same work
    (APB's mask: anchor rows skip the passing keys), one block per host in order does not."""
    world, block, anchor, passing = 8, 2048, 512, 256
    virtual = [KernelCall(anchor + block, v * passing + anchor + block, anchor_len=anchor, prefix_len=v * passing).visible
               for v in range(2 * world)]
    paired = [virtual[a] + virtual[b] for a, b in ZIGZAG.pairs(world)]
    in_order = [virtual[2 * r] + virtual[2 * r + 1] for r in range(world)]
    assert max(paired) == min(paired)
    assert max(in_order) / min(in_order) > 1.5
    with pytest.raises(LongCtxError, match="too short for 4 workers with the zigzag layout"):
        ZIGZAG.virtual_blocks(7, 4)
    with pytest.raises(LongCtxError, match="do not give 4 non-empty blocks"):
        ZIGZAG.virtual_blocks(10, 2, sizes=[5, 5, 0, 0])


# ---------------------------------------------------------------------------------------------
# The cost model counts what the methods compute


def _bottom_right_pairs(n_q, n_k):
    return sum(max(0, min(n_k, row + n_k - n_q + 1)) for row in range(n_q))


@pytest.mark.parametrize("layout", ["contiguous", "zigzag", "striped"])
@pytest.mark.parametrize("doc_len,world", [(37, 3), (64, 4), (101, 5)])
def test_ring_pairs_are_the_causal_mask_and_the_work_items(layout, doc_len, world):
    from burst.blocks import block_items

    runner, plan = make_plan("burst", doc_len, world, layout=layout)
    for host in plan.hosts:
        computed = scores = 0
        for source in plan.hosts:
            for item in block_items(host.spans, source.spans):
                n_q = item.q_rows.stop - item.q_rows.start
                n_k = item.k_rows.stop - item.k_rows.start
                computed += _bottom_right_pairs(n_q, n_k) if item.causal else n_q * n_k
                scores += n_q * n_k
        work = runner.planner.host_work(plan, host)
        assert computed == causal_pairs(host.spans) == work.head_pairs // SHAPE.heads
        assert scores == work.head_rect_pairs // SHAPE.heads


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_allgather_pairs_match_its_calls(layout):
    runner, plan = make_plan("allgather", 97, 3, layout=layout)
    for host in plan.hosts:
        work = runner.planner.host_work(plan, host)
        calls = [(len(span), span.stop) for span in host.spans]  # queries of a span over keys [0, stop)
        assert work.head_pairs // SHAPE.heads == sum(_bottom_right_pairs(n_q, n_k) for n_q, n_k in calls)
        assert work.head_rect_pairs // SHAPE.heads == sum(n_q * n_k for n_q, n_k in calls)


def test_kernel_call_counts_the_kernel_mask():
    """`KernelCall.visible` / `.scores` against the kernel's mask, entry by entry."""
    for q_len, k_len, causal, anchor, prefix in [(9, 9, True, 0, 0), (7, 12, True, 5, 4), (12, 7, True, 0, 0),
                                                 (5, 30, True, 6, 30), (6, 4, False, 3, 2), (0, 5, True, 0, 0),
                                                 (4, 9, True, 9, 2), (8, 3, True, 2, 5)]:
        mask = _visibility(q_len, k_len, causal, anchor, prefix, torch.device("cpu"))
        call = KernelCall(q_len, k_len, causal, anchor, prefix)
        assert (call.visible, call.scores) == (int(mask.sum()), mask.numel()), (q_len, k_len, causal, anchor, prefix)


@pytest.mark.parametrize("anchor,passing,rows", [(0, 0, 9), (5, 0, 7), (5, 12, 7), (0, 12, 7), (6, 30, 1)])
def test_apb_work_is_the_published_pattern(anchor, passing, rows):
    """An APB host's counted pairs: anchor rows see the anchor causally, a probe its own rows,
    local rows all of the passing block and anchor and their block causally."""
    from apb.layout import APBHostPlan

    planner = get_method("apb", RunConfig(method="apb", device="cpu")).planner
    for probe in (0, 4) if anchor == 0 else (0,):
        host = APBHostPlan(1, (Span(100, 100 + rows),), anchor_len=anchor, passing_len=passing, probe_len=probe)
        work = planner.work(host, 3, 0)
        tri = lambda n: n * (n + 1) // 2  # noqa: E731
        assert work.head_pairs == SHAPE.heads * (tri(anchor) + tri(probe) + rows * (passing + anchor) + tri(rows))
        assert work.head_rect_pairs == SHAPE.heads * ((anchor + rows) * (passing + anchor + rows) + probe * probe)
        assert work.rows == anchor + probe + rows


@pytest.mark.parametrize("world", [2, 4, 8])
def test_ulysses_work_follows_its_head_ranges(world):
    runner, plan = make_plan("ulysses", 1000, world)
    for host in plan.hosts:
        work = runner.planner.host_work(plan, host)
        assert work.head_pairs == SHAPE.heads // world * 1000 * 1001 // 2 and work.messages == 3 * (world - 1)


def test_apb_estimate_parts():
    _, plan = make_plan("apb", 131072, 8, balance="equal")
    first, last = plan.hosts[0].est_parts, plan.hosts[-1].est_parts
    assert last["attention_ms"] > 2 * first["attention_ms"]  # h * l_p passing keys and the anchor
    assert last["token_ms"] > first["token_ms"]  # anchor rows go through the MLP too
    assert first["comm_ms"] > 0 and plan.hosts[-1].passing_len == 7 * 2048
    assert all(host.est_ms == pytest.approx(sum(v for k, v in host.est_parts.items() if k != "total_ms"), rel=1e-3)
               for host in plan.hosts)


# ---------------------------------------------------------------------------------------------
# Plans of every method: coverage, order, anchors, no empty hosts


def _check_plan(runner, plan, doc_len, world, query_len):
    plan.validate()
    assert plan.doc_len == doc_len and plan.world == world and len(plan.hosts) == world
    for host in plan.hosts:
        assert host.num_tokens >= 1, f"host {host.rank} is empty"
        assert host.est_ms is not None and host.est_ms > 0
        starts = [span.start for span in host.spans]
        assert starts == sorted(starts) and all(a.stop <= b.start for a, b in zip(host.spans, host.spans[1:])
                                                if a.step == b.step == 1)
    if plan.layout == "contiguous":
        bounds = [(host.spans[0].start, host.spans[0].stop) for host in plan.hosts]
        assert bounds[0][0] == 0 and bounds[-1][1] == doc_len
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # blocks in rank order
    totals = plan.totals()
    assert totals["doc_tokens"] == doc_len and totals["critical_ms"] == max(plan.estimates())
    if runner.name in ("apb", "star"):
        block = split_sizes(doc_len, world)[0]
        assert plan.hosts[0].anchor_len == 0
        for host in plan.hosts:
            assert host.anchor_len in (0, plan.details["anchor_len"]) and host.anchor_len <= min(block, doc_len)
            assert host.anchor_len == 0 or host.probe_len == 0
            assert host.passing_len == sum(other.sends for other in plan.hosts[: host.rank])
            assert 0 <= host.sends <= host.candidates
            if runner.name == "apb" and host.anchor_len:
                assert host.question_len == query_len and host.anchor_len >= query_len
        assert plan.hosts[-1].sends == 0 and plan.append_rank == world - 1
    if doc_len <= 4096:  # local inputs keep every owned token at its own position, in order
        doc = list(range(10_000, 10_000 + doc_len))
        question = list(range(query_len))
        for host in plan.hosts:
            ids, positions = runner.local_inputs(plan, host.rank, doc, question)
            rows = runner.owned_rows(plan, host.rank)
            assert positions[rows] == host.positions() == sorted(host.positions())
            assert ids[rows] == [doc[pos] for pos in host.positions()]
            assert positions[: rows.start] == list(range(rows.start))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(METHODS),
       doc_len=st.one_of(st.integers(1, 64), st.integers(1, 4096), st.integers(1, 2**20)),
       world=st.integers(1, 16), query_len=st.integers(1, 40),
       balance=st.sampled_from(["equal", "auto"]), layout=st.sampled_from([None, "contiguous", "zigzag", "striped"]),
       slow_host=st.one_of(st.none(), st.floats(0.25, 4)))
@example("apb", 2**20, 16, 40, "auto", None, None)
@example("star", 2**20, 16, 1, "auto", None, 0.5)
@example("ring", 2**20, 13, 1, "auto", None, 2.0)
@example("burst", 2**20, 16, 1, "equal", "striped", None)
@example("allgather", 32, 16, 1, "auto", "zigzag", None)
@example("ulysses", 16, 16, 1, "auto", None, None)
@example("dense", 1, 1, 1, "auto", None, None)
def test_every_method_plans_any_length(method, doc_len, world, query_len, balance, layout, slow_host):
    options = {"balance": balance}
    if method in ("burst", "allgather"):
        options["layout"] = layout if method == "burst" or layout != "striped" else None
    if slow_host is not None:
        options["host_speeds"] = tuple([1.0] * (world - 1) + [slow_host])
    try:
        runner, plan = make_plan(method, doc_len, world, query_len, **options)
    except LongCtxError as exc:
        message = str(exc)
        assert "\n" not in message
        layout_used = options.get("layout") or {"burst": "zigzag", "allgather": "zigzag"}.get(method, "contiguous")
        need = 2 * world if layout_used == "zigzag" else world
        block = -(-doc_len // world)
        assert (doc_len < need and "too short" in message) \
            or (method == "dense" and world > 1) \
            or (method == "ulysses" and SHAPE.heads % world) \
            or (method == "apb" and world > 1 and query_len > block), message
        return
    _check_plan(runner, plan, doc_len, world, query_len)
    if balance == "auto" and method in ("apb", "star") and world > 1:
        assert plan.critical_ms <= plan.details["equal_critical_ms"] + 1e-6


def test_unavoidable_empty_host_is_a_clear_error():
    for method, world, length in (("apb", 8, 7), ("ring", 16, 15), ("burst", 4, 7), ("star", 3, 2)):
        with pytest.raises(LongCtxError, match=r"too short for \d+ workers") as info:
            make_plan(method, length, world, query_len=1, balance="auto")
        assert "\n" not in str(info.value)
    for method in ("ring", "apb"):
        with pytest.raises(LongCtxError, match="the document is empty"):
            make_plan(method, 0, 1)


# ---------------------------------------------------------------------------------------------
# Acceptance: APB at 131,072 tokens on 8 hosts


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_apb_128k_on_8_hosts_balanced_within_5_percent_of_the_mean(device):
    runner = get_method("apb", RunConfig(method="apb", nproc=8, device=device, balance="auto")).planner
    balanced = runner.plan(131072, 32, 8)
    equal = get_method("apb", RunConfig(method="apb", nproc=8, device=device, balance="equal")).plan(131072, 32, 8)
    assert balanced.details["balance"] == "auto"
    assert balanced.critical_ms <= 1.05 * balanced.mean_ms
    assert equal.critical_ms >= 1.15 * equal.mean_ms  # the equal split's last host sets the pace
    assert balanced.critical_ms < equal.critical_ms
    sizes = balanced.details["block_sizes"]
    assert sum(sizes) == 131072 and sizes == sorted(sizes, reverse=True)
    assert all(size % runner.cost_model().coeffs.tile == 0 for size in sizes[:-1])
    # the size rule follows the equal split's block: l_a = 4K, l_p = 2K as published
    assert (balanced.details["anchor_len"], balanced.details["passing_len"]) == (4096, 2048)


@pytest.mark.parametrize("method,layout,default", [("ring", None, "equal"), ("apb", None, "auto"),
                                                    ("star", None, "auto"), ("ulysses", None, "auto"),
                                                    ("burst", "contiguous", "auto"), ("allgather", "contiguous", "auto")])
def test_default_balance_is_the_methods(method, layout, default):
    """No --balance: ring runs the textbook equal blocks, the others balance; --balance overrides."""
    speeds = (1, 1, 1, 0.5)  # so that balancing moves tokens for every method, ulysses included
    _, plan = make_plan(method, 65536, 4, layout=layout, host_speeds=speeds)
    _, given = make_plan(method, 65536, 4, layout=layout, host_speeds=speeds, balance=default)
    other = "auto" if default == "equal" else "equal"
    _, flipped = make_plan(method, 65536, 4, layout=layout, host_speeds=speeds, balance=other)
    assert RunConfig(method=method).balance is None
    assert plan.block_sizes() == given.block_sizes() != flipped.block_sizes()
    equal = plan if default == "equal" else flipped
    assert equal.details["balance"] == "equal" and len(set(equal.block_sizes())) == 1
    assert (flipped if default == "equal" else plan).details["balance"] == "auto"


def test_host_speeds_shift_tokens_to_fast_hosts():
    _, plan = make_plan("apb", 65536, 4, balance="auto", host_speeds=(1, 1, 1, 0.5))
    _, even = make_plan("apb", 65536, 4, balance="auto")
    assert plan.hosts[3].num_tokens < 0.7 * even.hosts[3].num_tokens
    assert plan.critical_ms <= 1.05 * plan.mean_ms
    with pytest.raises(LongCtxError, match="gives 2 speeds for 4 workers"):
        make_plan("ring", 1000, 4, balance="auto", host_speeds=(1, 2))
    _, zigzag = make_plan("burst", 1000, 2, host_speeds=(1, 2))
    assert "not resized" in zigzag.details["note"]
    _, single = make_plan("dense", 1000, 1, host_speeds=(1, 2, 3, 4))  # one worker: nothing to balance
    assert single.hosts[0].num_tokens == 1000


# ---------------------------------------------------------------------------------------------
# Cost coefficients: shipped, calibrated, files


def test_costs_load_save_and_errors(tmp_path):
    shipped = load_costs("cpu")
    assert shipped.source.startswith("shipped") and load_costs("cuda").tile >= 1
    custom = CostCoefficients("cpu", 10.0, 1.0, 5.0, 1.0, 50.0, 64, "test")
    path = save_costs(custom)  # into $XDG_CACHE_HOME/longctx/costs.json
    assert path.is_file() and load_costs("cpu") == custom and load_costs("cuda").source.startswith("shipped")
    other = save_costs(CostCoefficients("cuda", 1e5, 1e5, 0.1, 100.0, 10.0, 128, "mine"), tmp_path / "c.json")
    assert load_costs("cuda", other).source == "mine"
    with pytest.raises(LongCtxError, match="has no entry for 'cpu'"):
        load_costs("cpu", other)
    with pytest.raises(LongCtxError, match="cannot read cost file"):
        load_costs("cpu", tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(LongCtxError, match="is not JSON"):
        load_costs("cpu", tmp_path / "bad.json")
    with pytest.raises(LongCtxError, match="no cost model for device 'tpu'"):
        load_costs("tpu")
    model = CostModel(SHAPE, custom)
    assert model.describe()["costs"] == "test"
    # the torch reference computes every score of a call, a block-skipping kernel the visible ones
    work = HostWork(head_pairs=1000, head_rect_pairs=2000)
    dense_kernel = CostModel(SHAPE, CostCoefficients("cpu", 10.0, 1.0, 5.0, 1.0, 50.0, 1, "t", "all"))
    assert dense_kernel.host_estimate(work).attention_ms == pytest.approx(2 * model.host_estimate(work).attention_ms)
    with pytest.raises(LongCtxError, match="attention_pairs must be"):
        CostCoefficients("cpu", 1.0, 1.0, 1.0, 1.0, 1.0, 1, "t", "some").validate()


@pytest.mark.parametrize("options,message", [
    ({"balance": "even"}, "--balance must be one of equal, auto"),
    ({"host_speeds": (1, -1)}, "--host-speeds must be positive"),
])
def test_bad_planner_settings(options, message):
    with pytest.raises(LongCtxError, match=message):
        RunConfig(model="m", **options).validate()


# ---------------------------------------------------------------------------------------------
# `longctx plan`


def test_cli_plan_prints_equal_and_balanced_side_by_side(capsys):
    assert cli_main(["plan", "--method", "apb", "--length", "131072", "--nproc", "8"]) == 0
    out = capsys.readouterr().out
    assert "--balance equal: equal blocks" in out and "--balance auto: balanced blocks" in out
    assert "anchor l_a 4096, passing l_p 2048" in out
    lines = out.splitlines()
    assert sum(line.strip().startswith(str(rank) + " ") for line in lines for rank in range(8)) == 8
    assert "0:16384" in out and "114688:131072" in out
    equal_line = next(line for line in lines if line.startswith("equal: critical path"))
    auto_line = next(line for line in lines if line.startswith(" auto: critical path"))
    imbalance = [float(line.split("imbalance ")[1].split()[0]) for line in (equal_line, auto_line)]
    assert imbalance[0] > 1.1 and imbalance[1] < 1.01
    assert "x shorter than the equal split's" in out


def test_cli_plan_json_and_single_balance(capsys):
    assert cli_main(["plan", "--method", "apb", "--length", "131072", "--nproc", "8", "--device", "cuda",
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["plans"]) == {"equal", "auto"} and report["speedup"] > 1.1
    assert report["imbalance"]["auto"] <= 1.05 < report["imbalance"]["equal"]
    hosts = report["plans"]["auto"]["hosts"]
    assert [host["anchor_len"] for host in hosts] == [0] + [4096] * 7
    assert [host["passing_len"] for host in hosts] == [2048 * rank for rank in range(8)]
    assert report["plans"]["auto"]["totals"]["doc_tokens"] == 131072
    assert cli_main(["plan", "--method", "ring", "--length", "5000", "--nproc", "3", "--balance", "auto",
                     "--host-speeds", "1,2,1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["plans"]) == ["auto"] and report["estimate"]["host_speeds"] == [1, 2, 1]


HOST_KEYS = ["rank", "tokens", "spans", "anchor_len", "passing_len", "est_ms", "est_parts"]


@pytest.mark.parametrize("method", ["dense", "ring", "burst", "ulysses", "allgather", "apb", "star", "spava"])
def test_every_plans_json_hosts_have_the_same_keys(method, capsys):
    """`longctx plan --json` keeps one per-host shape for every method (the keys it always had;
    a method without an anchor or passing block reports 0 for both)."""
    nproc = 1 if method == "dense" else 4
    assert cli_main(["plan", "--method", method, "--length", "8192", "--nproc", str(nproc), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for plan in report["plans"].values():
        assert [list(host) for host in plan["hosts"]] == [HOST_KEYS] * nproc
        if method in ("dense", "ring", "burst", "ulysses", "allgather"):
            assert {(host["anchor_len"], host["passing_len"]) for host in plan["hosts"]} == {(0, 0)}


def test_cli_plan_reads_a_model_config_and_explains_bad_input(capsys):
    assert cli_main(["plan", "--model", os.path.join(REPO, "examples", "models", "needle-llama"), "--method", "burst",
                     "--layout", "striped", "--length", "1000", "--nproc", "4"]) == 0
    out = capsys.readouterr().out
    assert "2 layers, hidden 128, 4 heads / 2 KV heads x 32" in out and "1:1000:4" in out
    for argv, message in (
        (["--method", "ulysses", "--nproc", "3"], "divide the attention heads"),
        (["--method", "apb", "--length", "5", "--nproc", "8"], "too short for 8 workers"),
        (["--method", "ring", "--nproc", "4", "--host-speeds", "1,1"], "gives 2 speeds for 4 workers"),
        (["--model", "/no/such/model"], "does not exist"),
        (["--length", "0"], "--length must be at least 1"),
    ):
        assert cli_main(["plan", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_cli_calibrate_saves_coefficients_the_planner_uses(tmp_path, capsys):
    costs = tmp_path / "costs.json"
    assert cli_main(["plan", "--calibrate", "--device", "cpu", "--layers", "2", "--hidden", "64", "--heads", "4",
                     "--kv-heads", "2", "--head-dim", "16", "--intermediate", "128", "--calibrate-sizes", "32", "64",
                     "--costs", str(costs), "--link-gb-per-s", "3", "--json"]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert saved["saved"] == str(costs) and saved["costs"]["link_gb_per_s"] == 3
    assert saved["costs"]["linear_gflops"] > 0 and saved["costs"]["attention_gflops"] > 0
    assert cli_main(["plan", "--device", "cpu", "--costs", str(costs), "--length", "4096", "--nproc", "2",
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["estimate"]["costs"].startswith("calibrated on")


def test_a_plug_in_method_calibrates_and_prices_a_coefficient_of_its_own(tmp_path, capsys):
    """`plan --calibrate --method <plug-in>` measures the plug-in's own coefficient beside the
    core's, the file keeps it, and its planner's estimates price its work with it."""
    method, costs = "plugins.calibrated:CountingRing", tmp_path / "costs.json"
    assert cli_main(["plan", "--calibrate", "--method", method, "--device", "cpu", "--layers", "2", "--hidden", "64",
                     "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--intermediate", "128",
                     "--calibrate-sizes", "32", "64", "--costs", str(costs), "--json"]) == 0
    rate = json.loads(capsys.readouterr().out)["costs"]["copy_ns_per_row"]
    assert rate > 0 and json.loads(costs.read_text())["cpu"]["copy_ns_per_row"] == rate
    assert cli_main(["plan", "--method", method, "--device", "cpu", "--costs", str(costs), "--length", "1000",
                     "--nproc", "2", "--balance", "equal", "--layers", "2", "--json"]) == 0
    hosts = json.loads(capsys.readouterr().out)["plans"]["equal"]["hosts"]
    assert [host["est_parts"]["method_ms"] for host in hosts] == [round(500 * rate * 2 * 1e-6, 4)] * 2
    assert cli_main(["plan", "--method", "ring", "--device", "cpu", "--costs", str(costs), "--length", "1000",
                     "--nproc", "2", "--json"]) == 0  # a method without work of its own shows none
    assert "method_ms" not in json.loads(capsys.readouterr().out)["plans"]["equal"]["hosts"][0]["est_parts"]


# ---------------------------------------------------------------------------------------------
# The engine runs uneven plans; exact methods still equal dense


@pytest.fixture(scope="module")
def llama(tiny_model):
    path = tiny_model("llama")
    return path, load_model(path, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("method,world,options", [
    ("ring", 3, {"balance": "auto"}),
    ("ring", 4, {"balance": "auto", "host_speeds": (1, 0.3, 2, 1)}),
    ("burst", 3, {"balance": "auto", "layout": "contiguous", "host_speeds": (0.5, 1, 1)}),
    ("allgather", 4, {"balance": "auto", "layout": "contiguous", "host_speeds": (3, 1, 1, 1)}),
    ("ulysses", 2, {"balance": "auto", "host_speeds": (1, 0.2)}),
    ("plugins.uneven:UnevenRing", 4, {}),
    ("plugins.uneven:UnevenUlysses", 2, {}),
    ("plugins.uneven:UnevenAllGather", 3, {}),
])
def test_exact_methods_on_uneven_plans_equal_dense(llama, method, world, options):
    path, model = llama
    doc, question = random_prompt(256, 211, 5, seed=world)
    reference = dense_result(path, doc, question)
    result = run_workers(model, RunConfig(model=path, method=method, **options), Request(doc, question, 6, method, True),
                         world)
    sizes = [host["tokens"] for host in result.plan["hosts"]]
    assert len(set(sizes)) > 1 and sum(sizes) == 211, sizes  # the plan really is uneven
    assert relative_error(result, reference) <= 1e-4
    assert result.tokens == reference.tokens


def test_apb_full_passing_on_a_balanced_plan_equals_dense(llama):
    """Slow host 0-1, fast host 2: the last host holds most of the document, every earlier block
    fits in l_p, so passing covers every key and APB is exact."""
    path, model = llama
    doc, question = random_prompt(256, 301, 5, seed=3)
    reference = dense_result(path, doc, question)
    config = RunConfig(model=path, method="apb", anchor_len=0, passing_ratio=1.0, balance="auto",
                       host_speeds=(0.5, 0.5, 4))
    result = run_workers(model, config, Request(doc, question, 6, "apb", True), 3)
    plan = result.plan
    assert plan["balance"] == "auto" and plan["block_sizes"][2] > 101
    assert plan["passing_tokens"] == plan["block_sizes"][:2] + [0]
    assert relative_error(result, reference) <= 1e-4 and result.tokens == reference.tokens


def test_balanced_plans_on_a_real_worker_pool_equal_dense(tiny_model):
    """One 2-worker pool: rank 0's plan is broadcast and run by both processes."""
    path = tiny_model("llama")
    doc, question = random_prompt(256, 233, 5, seed=7)
    reference = dense_result(path, doc, question)
    with LongContextLM(path, method="ring", nproc=2, balance="auto", host_speeds=(1, 0.25)) as lm:
        for method in ("ring", "ulysses", "plugins.uneven:UnevenAllGather"):
            result = lm.run_ids(doc, question, max_new_tokens=6, method=method, return_hidden=True)
            sizes = [host["tokens"] for host in result.plan["hosts"]]
            assert sizes[0] > sizes[1] and sum(sizes) == 233, (method, sizes)
            assert relative_error(result, reference) <= 1e-4, method
            assert result.tokens == reference.tokens, method
            assert all(host["est_ms"] > 0 for host in result.plan["hosts"])
    assert math.isfinite(result.plan["totals"]["critical_ms"])
