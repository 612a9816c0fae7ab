"""The CPU production path: PyTorch's fused flash attention, split into pieces it serves exactly.

`torch.ops.aten._scaled_dot_product_flash_attention_for_cpu` returns (out, logsumexp) and
reads GQA key/value heads by index, but its causal mask is top-left aligned (query i sees
key j iff j <= i) and it knows no APB rule. Our masks are written as a diagonal offset: query
i sees key j iff j <= i + offset (offset = Sk - Sq for the bottom-right mask). Any such mask
is at most two fused calls, neither of which computes a hidden score:

    keys:      0 ........ off-1 | off ............ Sk-1
    rows 0..   [ all visible    | top-left causal    ]     off = offset of the first row
               non-causal call    causal call            that sees anything

merged exactly (log-sum-exp). Rows above that first row see nothing (out 0, lse -inf). The
APB rule (queries below `anchor_len` skip the first `prefix_len` keys) splits the rows in
two: anchor rows over keys [prefix_len, Sk), the others over all keys, each a diagonal mask.
"""

import math

import torch

from longctx.kernels.merge import merge

_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def serves(q, k, v):
    """True when the fused CPU kernel can compute this call: CPU tensors, a float dtype it
    supports, and equal query/key/value head dims."""
    return (q.device.type == "cpu" and q.dtype in FUSED_DTYPES
            and q.shape[-1] == k.shape[-1] == v.shape[-1] and k.dtype == q.dtype == v.dtype)


def fused_cpu_attention(q, k, v, *, causal, anchor_len=0, prefix_len=0, scale=None):
    """Attention with log-sum-exp on the CPU through PyTorch's fused flash kernel.

    Same contract as `reference_attention`: q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D] on the CPU
    (any strides), Hq a multiple of Hkv; bottom-right causal; queries < `anchor_len` skip
    keys < `prefix_len`. Returns out [B, Hq, Sq, D] in q.dtype and lse [B, Hq, Sq] float32;
    rows that see no key get out 0 and lse -inf. Callers check `serves(q, k, v)` first.
    """
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    if q_heads % kv_heads:
        raise ValueError(f"query heads ({q_heads}) must be a multiple of key/value heads ({kv_heads})")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    offset = k_len - q_len
    anchor_rows = min(max(0, anchor_len), q_len) if prefix_len > 0 else 0
    if anchor_rows == 0:
        return _diagonal(q, k, v, offset if causal else None, scale)
    prefix = min(prefix_len, k_len)
    anchor_out, anchor_lse = _diagonal(q[:, :, :anchor_rows], k[:, :, prefix:], v[:, :, prefix:],
                                       offset - prefix if causal else None, scale)
    rest_out, rest_lse = _diagonal(q[:, :, anchor_rows:], k, v, offset + anchor_rows if causal else None, scale)
    return torch.cat([anchor_out, rest_out], dim=2), torch.cat([anchor_lse, rest_lse], dim=2)


def _diagonal(q, k, v, offset, scale):
    """(out, lse) of q over k/v where query i sees key j iff j <= i + offset (all keys when
    `offset` is None)."""
    q_len, k_len = q.shape[2], k.shape[2]
    if offset is not None and offset >= k_len - 1:
        offset = None  # every row sees every key
    if q_len == 0 or k_len == 0:
        return _empty(q, v)
    if offset is None:
        return _fused(q, k, v, False, scale)
    blind = min(q_len, max(0, -offset))  # rows that see no key at all
    if blind:
        out, lse = _empty(q[:, :, :blind], v)
        seen_out, seen_lse = _diagonal(q[:, :, blind:], k, v, offset + blind, scale)
        return torch.cat([out, seen_out], dim=2), torch.cat([lse, seen_lse], dim=2)
    causal_out, causal_lse = _fused(q, k[:, :, offset:], v[:, :, offset:], True, scale)
    if offset == 0:
        return causal_out, causal_lse
    full_out, full_lse = _fused(q, k[:, :, :offset], v[:, :, :offset], False, scale)
    out, lse = merge(full_out, full_lse, causal_out, causal_lse)
    return out.to(q.dtype), lse


def _fused(q, k, v, causal, scale):
    """One call of the fused kernel (top-left causal when `causal`); lse as float32."""
    out, lse = _FLASH_CPU(q, k, v, 0.0, causal, attn_mask=None, scale=scale)
    return out, lse.float()


def _empty(q, v):
    """Result for rows that see no key: out 0, lse -inf."""
    batch, heads, rows, _ = q.shape
    out = torch.zeros(batch, heads, rows, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.full((batch, heads, rows), float("-inf"), dtype=torch.float32, device=q.device)
    return out, lse
