"""Exact online-softmax merge of partial attention results over disjoint key sets."""

import torch


def merge(out_a, lse_a, out_b, lse_b):
    """Merge two partial attentions of the same queries over disjoint key sets.

    out_* [..., Sq, D] (any float dtype), lse_* [..., Sq] float32. Returns (out, lse) with out
    float32 and lse float32: lse = logaddexp(lse_a, lse_b), out = sum of exp(lse_x - lse) * out_x.
    A side whose lse is -inf (saw no key) contributes nothing; if both are -inf the row stays
    zero with lse -inf.
    """
    lse = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    weight_a = torch.exp(lse_a - safe)[..., None]
    weight_b = torch.exp(lse_b - safe)[..., None]
    out = weight_a * out_a.float() + weight_b * out_b.float()
    return out, lse


def merge_many(parts):
    """Merge a sequence of (out, lse) pairs over disjoint key sets, in the given order.

    Same shapes and dtypes as `merge`; the order is fixed so every worker that merges the
    same parts gets bit-identical results. Raises ValueError on an empty sequence.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("merge_many needs at least one partial result")
    out, lse = parts[0][0].float(), parts[0][1]
    for part_out, part_lse in parts[1:]:
        out, lse = merge(out, lse, part_out, part_lse)
    return out, lse
