"""APB / Star planning: sizes rule, anchor contents, per-host passing facts, bad input (pure, no workers)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apb.layout import rule_length
from longctx.plan_report import plan_one
from longctx.config import RunConfig
from longctx.errors import LongCtxError
from longctx.registry import get_method


class _ModelConfig:
    num_attention_heads, num_key_value_heads, hidden_size, num_hidden_layers = 4, 2, 64, 2


def apb_plan(doc_len, query_len, world, method="apb", **options):
    """(method object, plan) for a RunConfig with `options`."""
    runner = get_method(method, RunConfig(method=method, nproc=world, **options).validate())
    return runner, runner.plan(doc_len, query_len, world)


def test_rule_matches_the_paper_and_rounds_to_tiles():
    assert (rule_length(16384, 4), rule_length(16384, 8)) == (4096, 2048)
    assert rule_length(1000, 4) == 256 and rule_length(1000, 8) == 128 and rule_length(700, 4) == 192
    assert rule_length(100, 4) == 25 and rule_length(7, 8) == 0


def test_paper_setting_128k_on_8_hosts():
    _, plan = apb_plan(131072, 20, 8, balance="equal")  # the published equal split
    details = plan.details
    assert (details["anchor_len"], details["passing_len"]) == (4096, 2048)
    assert details["block_sizes"] == [16384] * 8 and details["passing_tokens"] == [2048] * 7 + [0]
    assert [host.anchor_len for host in plan.hosts] == [0] + [4096] * 7
    assert [host.passing_len for host in plan.hosts] == [2048 * rank for rank in range(8)]
    assert plan.append_rank == 7 and plan.hosts[0].protected == 4096
    summary = plan.summary()
    assert summary["hosts"][3]["anchor_len"] == 4096 and summary["compressor"] == "query"


def test_anchor_holds_head_tokens_question_then_more_document():
    doc = list(range(100, 400))
    question = [1, 2, 3]
    runner, plan = apb_plan(len(doc), len(question), 3, anchor_len=40, passing_len=10, balance="equal")
    ids, positions = runner.local_inputs(plan, 2, doc, question)
    assert ids[:40] == doc[:16] + question + doc[16:37]
    assert positions == list(range(40)) + list(range(200, 300))
    assert runner.owned_rows(plan, 2) == slice(40, 140)
    # host 0 has no anchor; it runs a question probe its block does not attend to
    ids, positions = runner.local_inputs(plan, 0, doc, question)
    host0 = plan.hosts[0]
    assert host0.anchor_len == 0 and host0.probe_len == 19 and ids[:19] == doc[:16] + question
    assert positions[:19] == list(range(19)) and positions[19:] == list(range(100))
    assert host0.protected == 40 and host0.sends == 10


def test_head_tokens_configurable_and_short_anchor():
    doc, question = list(range(100, 300)), [1, 2, 3, 4, 5]
    runner, plan = apb_plan(len(doc), len(question), 2, anchor_len=8, anchor_head_tokens=2)
    ids, _ = runner.local_inputs(plan, 1, doc, question)
    assert ids[:8] == doc[:2] + question + doc[2:3]
    runner, plan = apb_plan(len(doc), len(question), 2, anchor_len=6)
    assert runner.local_inputs(plan, 1, doc, question)[0][:6] == doc[:1] + question


def test_star_anchor_is_the_first_block_without_question():
    doc, question = list(range(100, 301)), [1, 2]
    runner, plan = apb_plan(len(doc), len(question), 3, method="star")
    assert plan.details["anchor_len"] == 67 and plan.details["passing_tokens"] == [0, 0, 0]
    ids, positions = runner.local_inputs(plan, 1, doc, question)
    assert ids[:67] == doc[:67] and positions[:67] == list(range(67))
    assert not plan.details["question_in_anchor"]
    _, plan = apb_plan(len(doc), len(question), 3, method="star", anchor_len=10)
    assert [host.anchor_len for host in plan.hosts] == [0, 10, 10]


def test_full_passing_without_anchor_needs_no_scoring():
    _, plan = apb_plan(301, 4, 4, anchor_len=0, passing_ratio=1.0, balance="equal")
    assert [host.sends for host in plan.hosts] == [76, 75, 75, 0]
    assert [host.passing_len for host in plan.hosts] == [0, 76, 151, 226]
    assert not any(host.selects or host.lead_len for host in plan.hosts)


def test_passing_ratio_applies_to_each_hosts_own_block():
    """Balanced blocks differ in size: a ratio of 1 still passes every earlier block whole
    (found by tests/test_fuzz_exact.py: the ratio used to be taken of the equal block only)."""
    _, plan = apb_plan(600, 4, 3, anchor_len=0, passing_ratio=1.0, balance="auto", host_speeds=(4, 4, 1))
    sizes = [host.num_tokens for host in plan.hosts]
    assert len(set(sizes)) > 1 and max(sizes[:2]) > 200
    assert [host.sends for host in plan.hosts] == sizes[:2] + [0]
    _, plan = apb_plan(600, 4, 3, anchor_len=0, passing_ratio=0.5, balance="auto", host_speeds=(4, 4, 1))
    assert [host.sends for host in plan.hosts] == [round(host.num_tokens / 2) for host in plan.hosts[:2]] + [0]


def test_ratios_and_one_worker():
    _, plan = apb_plan(1000, 4, 2, anchor_ratio=0.5, passing_ratio=0.25)
    assert (plan.details["anchor_len"], plan.details["passing_len"]) == (250, 125)
    _, plan = apb_plan(1000, 4, 1)
    assert plan.hosts[0].lead_len == 0 and plan.hosts[0].sends == 0 and plan.append_rank == 0


def test_default_anchor_grows_for_a_long_question_and_says_so():
    _, plan = apb_plan(200, 40, 2)  # rule: 100 // 4 = 25 < 40
    assert plan.details["anchor_len"] == 56 and "grown" in plan.details["note"]


@pytest.mark.parametrize("options,doc_len,query_len,world,message", [
    ({"anchor_len": 10}, 200, 20, 2, "question .20 tokens. is longer than the anchor .10 tokens."),
    ({}, 200, 150, 2, "does not fit in an anchor"),
    ({"anchor_len": 101}, 200, 4, 2, "anchor length must be between 0 and the block size 100"),
    ({"passing_len": 500}, 200, 4, 2, "passing length must be between 0 and the block size 100"),
    ({"layout": "zigzag"}, 200, 4, 2, "contiguous layout"),
    ({"compressor": "magic"}, 200, 4, 2, "unknown compressor 'magic'"),
    ({"compressor": "retaining-heads"}, 200, 4, 2, "needs --retaining-heads FILE"),
    ({"compressor": "retaining-heads", "retaining_heads": "/no/such.safetensors"}, 200, 4, 2, "does not exist"),
    ({}, 3, 1, 4, "too short for 4 workers"),
])
def test_bad_input_is_one_clear_line(options, doc_len, query_len, world, message):
    config = RunConfig(model="m", method="apb", nproc=world, **options)
    with pytest.raises(LongCtxError, match=message) as info:
        plan_one(config.validate(), _ModelConfig(), doc_len, query_len)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("options,message", [
    ({"anchor_len": -1}, "--anchor-len must be >= 0"),
    ({"passing_len": -3}, "--passing-len must be >= 0"),
    ({"passing_ratio": 1.5}, "--passing-ratio must be between 0 and 1"),
])
def test_negative_sizes_rejected_by_the_config(options, message):
    with pytest.raises(LongCtxError, match=message):
        RunConfig(model="m", method="apb", **options).validate()


def test_star_refuses_passing_options():
    config = RunConfig(model="m", method="star", nproc=2, passing_len=8)
    with pytest.raises(LongCtxError, match="'star' passes no blocks"):
        plan_one(config, _ModelConfig(), 200, 4)


@settings(max_examples=150, deadline=None)
@given(doc_len=st.integers(1, 3000), world=st.integers(1, 8), query_len=st.integers(1, 30),
       method=st.sampled_from(["apb", "star"]), anchor=st.one_of(st.none(), st.integers(0, 40)),
       passing=st.one_of(st.none(), st.integers(0, 40)))
def test_any_length_gives_a_consistent_plan(doc_len, world, query_len, method, anchor, passing):
    if method == "star":
        passing = None
    try:
        runner, plan = apb_plan(doc_len, query_len, world, method, anchor_len=anchor, passing_len=passing)
    except LongCtxError:
        block = -(-doc_len // world)
        assert doc_len < world or max(anchor or 0, passing or 0) > block or (anchor or 0) < query_len \
            or query_len > block
        return
    doc = list(range(1000, 1000 + doc_len))
    question = list(range(query_len))
    assert plan.hosts[-1].sends == 0 and plan.append_rank == world - 1
    for host in plan.hosts:
        assert 0 <= host.sends <= host.candidates
        assert host.passing_len == sum(other.sends for other in plan.hosts[: host.rank])
        ids, positions = runner.local_inputs(plan, host.rank, doc, question)
        assert len(ids) == len(positions) == host.lead_len + host.num_tokens
        assert positions[: host.lead_len] == list(range(host.lead_len))
        assert ids[host.lead_len :] == [doc[pos] for pos in host.positions()]
        if host.question_len:
            start = host.head_len
            assert ids[start : start + query_len] == question
        if host.rank == 0:
            assert host.anchor_len == 0
