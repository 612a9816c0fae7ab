"""Spava's key selection (`spava.select`) against the rule written out independently: the mean
over the question's tokens and each KV head's GQA group of q·k in fp32, max-pooled over 5
neighbours, the top `sends` per KV head in position order; and the padding of gathered blocks."""

import pytest
import torch

from spava.select import pad_keys, selected_keys, selected_rows


def pooled_scores(question_q, keys):
    """The selection score written out: [B, Hkv, L] float64."""
    batch, q_heads, _, head_dim = question_q.shape
    kv_heads, length = keys.shape[1], keys.shape[2]
    group = q_heads // kv_heads
    scores = torch.zeros(batch, kv_heads, length, dtype=torch.float64)
    for head in range(kv_heads):
        queries = question_q[:, head * group : (head + 1) * group].double()  # [B, group, q, D]
        dots = torch.einsum("bgqd,bkd->bgqk", queries, keys[:, head].double())
        scores[:, head] = dots.mean(dim=(1, 2))
    pooled = torch.stack([scores[..., max(0, i - 2) : i + 3].max(dim=-1).values for i in range(length)], dim=-1)
    return pooled


@pytest.mark.parametrize("q_heads,kv_heads,query_len,length,sends", [
    (4, 2, 3, 40, 6), (8, 2, 1, 17, 4), (2, 2, 5, 64, 13), (4, 1, 2, 9, 8),
])
def test_rows_are_the_top_pooled_scores(q_heads, kv_heads, query_len, length, sends):
    """Every row scoring above the sends-th best is kept, none below it (ties at the threshold,
    which pooling makes common, may go either way)."""
    generator = torch.Generator().manual_seed(length)
    question_q = torch.randn(1, q_heads, query_len, 8, generator=generator)
    keys = torch.randn(1, kv_heads, length, 8, generator=generator)
    rows = selected_rows(question_q, keys, sends)
    assert rows.shape == (1, kv_heads, sends) and rows.dtype == torch.long
    assert bool((rows[..., 1:] > rows[..., :-1]).all())
    scores = pooled_scores(question_q, keys)
    for head in range(kv_heads):
        threshold = scores[0, head].sort(descending=True).values[sends - 1]
        chosen = set(rows[0, head].tolist())
        above = {i for i in range(length) if scores[0, head, i] > threshold + 1e-6}
        below = {i for i in range(length) if scores[0, head, i] < threshold - 1e-6}
        assert above <= chosen and not chosen & below


def test_a_key_the_question_points_at_brings_its_neighbours_per_kv_head():
    """KV head 0's question points at key 10, head 1's at key 30: each keeps that key and its
    pooling neighbourhood (±2), nothing else."""
    keys = torch.zeros(1, 2, 40, 4)
    keys[0, 0, 10, 0] = keys[0, 1, 30, 1] = 1.0
    question_q = torch.zeros(1, 4, 2, 4)
    question_q[0, :2, :, 0] = question_q[0, 2:, :, 1] = 5.0
    rows = selected_rows(question_q, keys, 5)
    assert rows[0, 0].tolist() == [8, 9, 10, 11, 12] and rows[0, 1].tolist() == [28, 29, 30, 31, 32]


def test_the_score_averages_the_gqa_group_and_the_question():
    """Two query heads of one group that disagree cancel; the key their mean points at wins."""
    keys = torch.zeros(1, 1, 30, 3)
    keys[0, 0, 5, 0] = 1.0  # what head 0 likes and head 1 dislikes as much
    keys[0, 0, 20, 1] = 1.0  # what both like a little
    question_q = torch.zeros(1, 2, 2, 3)
    question_q[0, 0, :, 0], question_q[0, 1, :, 0] = 10.0, -10.0
    question_q[0, :, 0, 1] = 1.0  # one question token of two points at key 20
    assert selected_rows(question_q, keys, 5)[0, 0].tolist() == [18, 19, 20, 21, 22]


def test_short_blocks_pass_every_row_and_empty_passes_none():
    keys = torch.randn(1, 2, 7, 4)
    question_q = torch.randn(1, 4, 3, 4)
    assert selected_rows(question_q, keys, 7)[0].tolist() == [list(range(7))] * 2
    assert selected_rows(question_q, keys, 100)[0].tolist() == [list(range(7))] * 2
    assert selected_rows(question_q, keys, 0).shape == (1, 2, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selected_keys_are_the_rows_of_each_kv_head(dtype):
    generator = torch.Generator().manual_seed(3)
    keys = torch.randn(1, 2, 25, 8, generator=generator).to(dtype)
    values = torch.randn(1, 2, 25, 8, generator=generator).to(dtype)
    question_q = torch.randn(1, 4, 2, 8, generator=generator).to(dtype)
    rows = selected_rows(question_q, keys, 6)
    kept_k, kept_v = selected_keys(question_q, keys, values, 6)
    assert kept_k.dtype == dtype and kept_k.shape == (1, 2, 6, 8)
    for head in range(2):
        assert torch.equal(kept_k[0, head], keys[0, head, rows[0, head]])
        assert torch.equal(kept_v[0, head], values[0, head, rows[0, head]])


def test_pad_keys_appends_zero_rows_and_keeps_full_blocks():
    block = torch.randn(2, 1, 2, 3, 4, dtype=torch.bfloat16)
    padded = pad_keys(block, 5)
    assert padded.shape == (2, 1, 2, 5, 4) and padded.dtype == torch.bfloat16
    assert torch.equal(padded[:, :, :, :3], block) and not padded[:, :, :, 3:].any()
    assert pad_keys(block, 3) is block
    assert pad_keys(block[:, :, :, :0], 2).shape == (2, 1, 2, 2, 4)
