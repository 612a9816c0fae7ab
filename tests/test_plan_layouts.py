"""Layouts own every token exactly once, in order, and reject documents that are too short."""

import pytest

from longctx.errors import LongCtxError
from longctx.layouts import LAYOUTS, ZIGZAG, get_layout
from longctx.plan import split_sizes


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("doc_len", [8, 9, 203, 1000, 1001])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_every_token_owned_once(layout, doc_len, world):
    hosts = get_layout(layout).hosts(doc_len, world)
    owned = sorted(pos for spans in hosts for span in spans for pos in span.positions())
    assert owned == list(range(doc_len))
    sizes = [sum(len(span) for span in spans) for spans in hosts]
    assert max(sizes) - min(sizes) <= 2 and min(sizes) >= 1


def test_zigzag_pairs_chunks_r_and_2p_minus_1_minus_r():
    hosts = LAYOUTS["zigzag"].hosts(16, 4)
    assert [(spans[0].start, spans[1].start) for spans in hosts] == [(0, 14), (2, 12), (4, 10), (6, 8)]


def test_striped_host_r_holds_positions_r_mod_p():
    hosts = LAYOUTS["striped"].hosts(10, 3)
    assert list(hosts[1][0].positions()) == [1, 4, 7]


def test_contiguous_takes_sizes_the_others_do_not():
    assert [spans[0].stop for spans in LAYOUTS["contiguous"].hosts(10, 3, [5, 3, 2])] == [5, 8, 10]
    with pytest.raises(LongCtxError, match="apply to the contiguous layout only"):
        ZIGZAG.hosts(10, 2, [5, 5])
    with pytest.raises(LongCtxError, match="do not give 3 non-empty blocks"):
        LAYOUTS["contiguous"].hosts(10, 3, [5, 5, 0])


def test_split_sizes_differ_by_at_most_one():
    assert split_sizes(10, 4) == [3, 3, 2, 2]


def test_too_short_and_unknown_layout_are_clear_errors():
    with pytest.raises(LongCtxError, match="too short for 4 workers"):
        get_layout("zigzag").hosts(7, 4)
    with pytest.raises(LongCtxError, match="unknown layout"):
        get_layout("spiral")
