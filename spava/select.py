"""Which keys a virtual block passes on: training-free, query-aware selection.

The question's post-RoPE queries (at their true positions, after the document) are averaged
over each KV head's GQA group and dotted with the block's keys in fp32, averaged over the
question's tokens (one dot with the mean query), max-pooled over 5 neighbours and the top
`sends` per KV head kept in position order: APB's query-aware selection (`apb.select_by_question`).
"""

import torch

from apb import select_by_question


def selected_keys(question_q, keys, values, sends):
    """(keys, values) [B, Hkv, sends, D] a block passes: all of its first `sends` rows when it
    has no more than that, else the best-scoring `sends` per KV head in position order.

    question_q [B, Hq, q, D] are the question's queries of this layer; keys/values
    [B, Hkv, L, D] the block's. Who calls it: `SpavaAttention.prefill_attention`.
    """
    if sends >= keys.shape[2]:
        return keys[:, :, :sends], values[:, :, :sends]
    index = select_by_question(question_q, keys, sends)[..., None].expand(-1, -1, -1, keys.shape[-1])
    return keys.gather(2, index), values.gather(2, index)


def pad_keys(block, length):
    """block [2, B, Hkv, n, D] (stacked K and V) zero-padded to `length` rows along dim 3, so
    every host contributes an equally shaped tensor to an all-gather."""
    if block.shape[3] == length:
        return block
    shape = list(block.shape)
    shape[3] = length - block.shape[3]
    return torch.cat([block, block.new_zeros(shape)], dim=3)
