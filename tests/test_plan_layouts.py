"""Layouts own every token exactly once, in order, and reject documents that are too short."""

import pytest

from longctx.errors import LongCtxError
from longctx.plan import LAYOUTS, layout_hosts, simple_plan, split_sizes


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("doc_len", [8, 9, 203, 1000, 1001])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_token_owned_once(layout, doc_len, world):
    plan = simple_plan("x", doc_len, 3, world, layout)
    owned = sorted(pos for host in plan.hosts for pos in host.positions())
    assert owned == list(range(doc_len))
    sizes = [host.num_tokens for host in plan.hosts]
    assert max(sizes) - min(sizes) <= 2 and min(sizes) >= 1


def test_zigzag_pairs_chunks_r_and_2p_minus_1_minus_r():
    hosts = layout_hosts(16, 4, "zigzag")
    assert [(spans[0].start, spans[1].start) for spans in hosts] == [(0, 14), (2, 12), (4, 10), (6, 8)]


def test_striped_host_r_holds_positions_r_mod_p():
    hosts = layout_hosts(10, 3, "striped")
    assert list(hosts[1][0].positions()) == [1, 4, 7]


def test_split_sizes_differ_by_at_most_one():
    assert split_sizes(10, 4) == [3, 3, 2, 2]


def test_too_short_and_unknown_layout_are_clear_errors():
    with pytest.raises(LongCtxError, match="too short for 4 workers"):
        layout_hosts(7, 4, "zigzag")
    with pytest.raises(LongCtxError, match="unknown layout"):
        layout_hosts(100, 2, "spiral")
    with pytest.raises(LongCtxError, match="empty"):
        simple_plan("x", 0, 1, 1, "contiguous")
