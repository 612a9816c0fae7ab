"""The torch reference attention and the LSE merge against straightforward formulas."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longctx.kernels import attention, merge, merge_many, reference_attention


def naive(q, k, v, visible, scale):
    """Materialised-mask attention in float64 with repeated KV heads; returns (out, lse)."""
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q.double(), k) * scale
    scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return probs @ v, lse


def mask(q_len, k_len, causal, anchor_len=0, prefix_len=0):
    rows = torch.arange(q_len)[:, None]
    cols = torch.arange(k_len)[None, :]
    visible = torch.ones(q_len, k_len, dtype=torch.bool)
    if causal:
        visible &= cols <= rows + k_len - q_len
    visible &= ~((rows < anchor_len) & (cols < prefix_len))
    return visible


@pytest.mark.parametrize("q_len,k_len", [(1, 1), (7, 7), (5, 130), (130, 130), (9, 4)])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (8, 2)])
@pytest.mark.parametrize("causal", [True, False])
def test_reference_matches_naive(q_len, k_len, heads, kv_heads, causal):
    torch.manual_seed(q_len * 31 + k_len)
    q = torch.randn(2, heads, q_len, 16)
    k, v = torch.randn(2, kv_heads, k_len, 16), torch.randn(2, kv_heads, k_len, 16)
    out, lse = reference_attention(q, k, v, causal=causal)
    want_out, want_lse = naive(q, k, v, mask(q_len, k_len, causal), 1 / math.sqrt(16))
    assert lse.dtype == torch.float32 and out.dtype == q.dtype
    assert torch.allclose(out.double(), want_out, atol=1e-5)
    assert torch.allclose(lse.double(), want_lse, atol=1e-5)


def test_rows_without_keys_are_zero_with_minus_inf_lse():
    q, k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    out, lse = reference_attention(q, k, v, causal=True)
    assert torch.isinf(lse[..., :3]).all() and (lse[..., :3] < 0).all()
    assert (out[..., :3, :] == 0).all()
    assert torch.isfinite(lse[..., 3:]).all()


def test_anchor_rule_skips_prefix_for_anchor_queries():
    torch.manual_seed(0)
    prefix, anchor, local = 5, 4, 6
    q = torch.randn(1, 2, anchor + local, 8)
    k, v = torch.randn(1, 1, prefix + anchor + local, 8), torch.randn(1, 1, prefix + anchor + local, 8)
    out, lse = reference_attention(q, k, v, causal=True, anchor_len=anchor, prefix_len=prefix)
    visible = mask(anchor + local, prefix + anchor + local, True, anchor, prefix)
    want_out, want_lse = naive(q, k, v, visible, 1 / math.sqrt(8))
    assert torch.allclose(out.double(), want_out, atol=1e-5)
    assert torch.allclose(lse.double(), want_lse, atol=1e-5)


def test_merge_of_disjoint_key_sets_equals_full_attention():
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 4, 10, 16), torch.randn(1, 2, 50, 16), torch.randn(1, 2, 50, 16)
    full_out, full_lse = reference_attention(q, k, v, causal=False)
    parts = [reference_attention(q, k[:, :, s], v[:, :, s], causal=False)
             for s in (slice(0, 20), slice(20, 21), slice(21, 50))]
    out, lse = merge_many(parts)
    assert torch.allclose(out, full_out, atol=1e-5) and torch.allclose(lse, full_lse, atol=1e-5)


def test_merge_handles_empty_sides_and_large_values():
    out_a, out_b = torch.randn(3, 4), torch.randn(3, 4)
    lse_a = torch.tensor([float("-inf"), 1000.0, float("-inf")])
    lse_b = torch.tensor([2.0, float("-inf"), float("-inf")])
    out, lse = merge(out_a, lse_a, out_b, lse_b)
    assert torch.allclose(out[0], out_b[0]) and torch.allclose(out[1], out_a[1])
    assert (out[2] == 0).all() and torch.isinf(lse[2])
    assert lse[1] == 1000.0 and not torch.isnan(out).any()


def test_bad_backend_and_heads_are_clear_errors():
    q, k = torch.randn(1, 3, 2, 8), torch.randn(1, 2, 2, 8)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        reference_attention(q, k, k, causal=True)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, k, k, causal=True, backend="cuda-magic")


@settings(max_examples=60, deadline=None)
@given(q_len=st.integers(1, 30), k_len=st.integers(1, 30), causal=st.booleans(), anchor=st.integers(0, 32),
       prefix=st.integers(0, 32), rows_per_chunk=st.integers(1, 7), seed=st.integers(0, 99))
def test_chunks_skip_only_hidden_keys(q_len, k_len, causal, anchor, prefix, rows_per_chunk, seed):
    """Small chunks (each reading only the keys its rows can see) give the naive result."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 4, q_len, 8, generator=gen)
    k, v = torch.randn(1, 2, k_len, 8, generator=gen), torch.randn(1, 2, k_len, 8, generator=gen)
    out, lse = reference_attention(q, k, v, causal=causal, anchor_len=anchor, prefix_len=prefix,
                                   chunk_scores=rows_per_chunk * k_len * 4)
    want_out, want_lse = naive(q, k, v, mask(q_len, k_len, causal, anchor, prefix), 1 / math.sqrt(8))
    assert torch.equal(torch.isneginf(lse), torch.isneginf(want_lse))
    assert torch.allclose(out.double(), want_out, atol=1e-5)
    seen = ~torch.isneginf(want_lse)
    assert torch.allclose(lse.double()[seen], want_lse[seen], atol=1e-5)
