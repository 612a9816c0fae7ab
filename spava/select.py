"""Which keys a virtual block passes on: training-free, query-aware selection.

The question's post-RoPE queries (at their true positions, after the document) are averaged
over each KV head's GQA group and dotted with the block's keys in fp32, averaged over the
question's tokens (one dot with the mean query), max-pooled over 5 neighbours and the top
`sends` per KV head kept in position order: APB's query-aware selection (`apb.select_by_question`).
"""

import torch

from apb import select_by_question


def selected_rows(question_q, keys, sends):
    """Rows of the block a virtual block passes: int64 [B, Hkv, min(sends, L)], ascending per
    KV head: all L rows when the block has no more than `sends` (none when `sends` is 0),
    else the best-scoring `sends`.

    question_q [B, Hq, q, D] are the question's queries of this layer; keys [B, Hkv, L, D] the
    block's. Who calls it: `selected_keys` (tests spy on it to rebuild a host's attention).
    """
    if sends >= keys.shape[2] or sends == 0:
        rows = torch.arange(min(sends, keys.shape[2]), device=keys.device)
        return rows.expand(keys.shape[0], keys.shape[1], -1)
    return select_by_question(question_q, keys, sends)


def selected_keys(question_q, keys, values, sends):
    """(keys, values) [B, Hkv, min(sends, L), D] a block passes: its `selected_rows` in
    position order. Shapes as in `selected_rows`; values [B, Hkv, L, D].
    Who calls it: `SpavaAttention.prefill_attention`."""
    index = selected_rows(question_q, keys, sends)[..., None].expand(-1, -1, -1, keys.shape[-1])
    return keys.gather(2, index), values.gather(2, index)


def pad_keys(block, length):
    """block [2, B, Hkv, n, D] (stacked K and V) zero-padded to `length` rows along dim 3, so
    every host contributes an equally shaped tensor to an all-gather."""
    if block.shape[3] == length:
        return block
    shape = list(block.shape)
    shape[3] = length - block.shape[3]
    return torch.cat([block, block.new_zeros(shape)], dim=3)
