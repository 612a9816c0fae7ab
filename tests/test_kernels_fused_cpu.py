"""The CPU production path (PyTorch's fused flash kernel, split by mask) against the reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_cases import MASK_CASES, case_id
from longctx.kernels import attention, fused_cpu_attention, reference_attention
from longctx.kernels import fused_cpu

FP32_TOL = 1e-5


def _inputs(batch, q_heads, kv_heads, q_len, k_len, head_dim, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_heads, q_len, head_dim, generator=gen).to(dtype)
    k = torch.randn(batch, kv_heads, k_len, head_dim, generator=gen).to(dtype)
    v = torch.randn(batch, kv_heads, k_len, head_dim, generator=gen).to(dtype)
    return q, k, v


def _check(q, k, v, tol=FP32_TOL, **masks):
    out, lse = fused_cpu_attention(q, k, v, **masks)
    ref_out, ref_lse = reference_attention(q, k, v, **masks)
    assert out.shape == ref_out.shape and out.dtype == q.dtype and lse.dtype == torch.float32
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))
    assert torch.all(out[torch.isneginf(lse)] == 0)
    seen = ~torch.isneginf(ref_lse)
    torch.testing.assert_close(lse[seen], ref_lse[seen], atol=tol, rtol=0)
    torch.testing.assert_close(out.float(), ref_out.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("case", MASK_CASES, ids=case_id)
def test_matches_reference_fp32(case):
    batch, q_heads, kv_heads, q_len, k_len, head_dim, causal, anchor, prefix = case
    q, k, v = _inputs(batch, q_heads, kv_heads, q_len, k_len, head_dim, seed=q_len * 1000 + k_len)
    _check(q, k, v, causal=causal, anchor_len=anchor, prefix_len=prefix)


@settings(max_examples=60, deadline=None)
@given(q_len=st.integers(0, 40), k_len=st.integers(0, 40), group=st.sampled_from([1, 2, 4]),
       causal=st.booleans(), anchor=st.integers(0, 45), prefix=st.integers(0, 45), seed=st.integers(0, 99))
def test_fuzzed_masks_match_reference(q_len, k_len, group, causal, anchor, prefix, seed):
    q, k, v = _inputs(1, 2 * group, 2, q_len, k_len, 16, seed=seed)
    _check(q, k, v, causal=causal, anchor_len=anchor, prefix_len=prefix)


def test_bf16_and_strided_views():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 70, 4, 32, generator=gen).transpose(1, 2)
    k = torch.randn(2, 130, 2, 32, generator=gen).transpose(1, 2)
    v = torch.randn(2, 130, 2, 32, generator=gen).transpose(1, 2)
    _check(q, k, v, causal=True, anchor_len=20, prefix_len=30)
    _check(q.bfloat16(), k.bfloat16(), v.bfloat16(), tol=2e-2, causal=True, anchor_len=20, prefix_len=30)


def test_custom_scale():
    q, k, v = _inputs(1, 4, 2, 33, 45, 24, seed=11)
    _check(q, k, v, causal=True, scale=0.3)


def test_no_hidden_score_is_computed(monkeypatch):
    """Every fused call is a plain (non-causal) or top-left causal block of visible keys: the
    pairs the kernel computes equal the pairs the mask shows."""
    calls = []
    real = fused_cpu._FLASH_CPU

    def counting(q, k, v, dropout, causal, **kwargs):
        n_q, n_k = q.shape[2], k.shape[2]
        calls.append(sum(min(n_k, i + 1) for i in range(n_q)) if causal else n_q * n_k)
        return real(q, k, v, dropout, causal, **kwargs)

    monkeypatch.setattr(fused_cpu, "_FLASH_CPU", counting)
    for q_len, k_len, anchor, prefix in [(50, 80, 20, 30), (80, 50, 0, 0), (64, 64, 0, 0), (10, 100, 10, 90)]:
        calls.clear()
        q, k, v = _inputs(1, 2, 1, q_len, k_len, 16)
        fused_cpu_attention(q, k, v, causal=True, anchor_len=anchor, prefix_len=prefix)
        rows = torch.arange(q_len)[:, None]
        cols = torch.arange(k_len)[None, :]
        visible = (cols <= rows + k_len - q_len) & ~((rows < anchor) & (cols < prefix))
        assert sum(calls) == int(visible.sum())


def test_dispatch():
    """`torch` (and `auto` on CPU) take the fused path when it serves; unequal V head dims fall
    back to the reference; `reference` forces the oracle."""
    q, k, v = _inputs(1, 4, 2, 9, 9, 16)
    out, _ = attention(q, k, v, causal=True, backend="torch")
    torch.testing.assert_close(out, fused_cpu_attention(q, k, v, causal=True)[0], atol=0, rtol=0)
    wide_v = torch.randn(1, 2, 9, 32)
    assert not fused_cpu.serves(q, k, wide_v)
    out, _ = attention(q, k, wide_v, causal=True, backend="auto")
    torch.testing.assert_close(out, reference_attention(q, k, wide_v, causal=True)[0], atol=0, rtol=0)
    out, _ = attention(q, k, v, causal=True, backend="reference")
    torch.testing.assert_close(out, reference_attention(q, k, v, causal=True)[0], atol=0, rtol=0)
