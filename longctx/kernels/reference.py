"""Torch reference attention with log-sum-exp: the test oracle, and the fallback for calls no fused op serves."""

import math

import torch


def _visibility(q_len, k_len, causal, anchor_len, prefix_len, device, start=0, stop=None, key_lo=0, key_hi=None):
    """Boolean [stop - start, key_hi - key_lo] mask of which keys key_lo..key_hi-1 query rows
    start..stop-1 (of q_len) may see (True = visible); the whole q_len x k_len by default."""
    stop = q_len if stop is None else stop
    key_hi = k_len if key_hi is None else key_hi
    rows = torch.arange(start, stop, device=device)[:, None]
    cols = torch.arange(key_lo, key_hi, device=device)[None, :]
    visible = torch.ones(stop - start, key_hi - key_lo, dtype=torch.bool, device=device)
    if causal:
        visible &= cols <= rows + (k_len - q_len)
    if anchor_len > 0 and prefix_len > 0:
        visible &= ~((rows < anchor_len) & (cols < prefix_len))
    return visible


def _key_range(q_len, k_len, causal, anchor_len, prefix_len, start, stop):
    """[lo, hi) of the keys any of query rows start..stop-1 can see; the chunk skips the rest."""
    hi = min(k_len, stop - 1 + k_len - q_len + 1) if causal else k_len
    lo = min(prefix_len, k_len) if stop <= anchor_len else 0
    return lo, max(lo, hi)


def reference_attention(q, k, v, *, causal, anchor_len=0, prefix_len=0, scale=None, softcap=None,
                        chunk_scores=1 << 24):
    """Attention of `q` over `k`/`v` returning `(out, lse)`: the test oracle and the fallback.

    Shapes: q [B, Hq, Sq, D], k and v [B, Hkv, Sk, D] with Hq a multiple of Hkv (GQA: query
    head h reads KV head h // (Hq // Hkv)). out is [B, Hq, Sq, D] in q's dtype; lse is
    [B, Hq, Sq] float32 (natural log). Rows that see no key get out = 0 and lse = -inf.
    Mask rules: `causal` is bottom-right aligned (query i sees key j iff j <= i + Sk - Sq);
    queries with index < `anchor_len` additionally skip the first `prefix_len` keys (APB).
    `softcap` (None: none) caps every scaled logit to `softcap * tanh(logit / softcap)` before
    the softmax (Gemma 2's attention logit soft-capping); lse is then over the capped logits.
    Computes in float32 chunked over query rows (about `chunk_scores` scores per chunk, so
    memory stays O(chunk * Sk)); each chunk reads only the key range its rows can see, and
    masks inside that range.
    """
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    if q_heads % kv_heads:
        raise ValueError(f"query heads ({q_heads}) must be a multiple of key/value heads ({kv_heads})")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    group = q_heads // kv_heads
    out = torch.zeros(batch, q_heads, q_len, v.shape[-1], dtype=torch.float32, device=q.device)
    lse = torch.full((batch, q_heads, q_len), float("-inf"), dtype=torch.float32, device=q.device)
    if q_len == 0 or k_len == 0:
        return out.to(q.dtype), lse
    qf = q.float().view(batch, kv_heads, group, q_len, head_dim)
    kf, vf = k.float(), v.float()
    rows_per_chunk = max(1, chunk_scores // max(1, k_len * q_heads * batch))
    for start in range(0, q_len, rows_per_chunk):
        stop = min(q_len, start + rows_per_chunk)
        lo, hi = _key_range(q_len, k_len, causal, anchor_len, prefix_len, start, stop)
        if lo == hi:
            continue
        scores = torch.einsum("bhgqd,bhkd->bhgqk", qf[:, :, :, start:stop], kf[:, :, lo:hi]) * scale
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        visible = _visibility(q_len, k_len, causal, anchor_len, prefix_len, q.device, start, stop, lo, hi)
        scores = scores.masked_fill(~visible, float("-inf"))
        chunk_lse = torch.logsumexp(scores, dim=-1)
        probs = torch.exp(scores - chunk_lse.nan_to_num(neginf=0.0)[..., None])
        chunk_out = torch.einsum("bhgqk,bhkd->bhgqd", probs, vf[:, :, lo:hi])
        out[:, :, start:stop] = chunk_out.reshape(batch, q_heads, stop - start, -1)
        lse[:, :, start:stop] = chunk_lse.reshape(batch, q_heads, stop - start)
    return out.to(q.dtype), lse
