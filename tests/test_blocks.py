"""Ring work items reproduce the exact causal mask between any two hosts' token sets."""

import pytest
import torch

from burst.blocks import block_items
from longctx.layouts import LAYOUTS, get_layout


def mask_from_items(items, n_q, n_k):
    covered = torch.zeros(n_q, n_k, dtype=torch.int32)
    for item in items:
        rows = torch.arange(n_q)[item.q_rows]
        cols = torch.arange(n_k)[item.k_rows]
        block = torch.ones(len(rows), len(cols), dtype=torch.int32)
        if item.causal:
            block = torch.tril(block, diagonal=len(cols) - len(rows))
        covered[rows[:, None], cols[None, :]] += block
    return covered


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("doc_len,world", [(8, 2), (23, 2), (37, 3), (50, 4), (9, 4)])
def test_items_cover_causal_mask_exactly_once(layout, doc_len, world):
    if layout == "zigzag" and doc_len < 2 * world:
        pytest.skip("too short for zigzag")
    hosts = get_layout(layout).hosts(doc_len, world)
    for mine in hosts:
        q_pos = torch.tensor([p for span in mine for p in span.positions()])
        for theirs in hosts:
            k_pos = torch.tensor([p for span in theirs for p in span.positions()])
            covered = mask_from_items(block_items(mine, theirs), len(q_pos), len(k_pos))
            want = (k_pos[None, :] <= q_pos[:, None]).int()
            assert torch.equal(covered, want)
