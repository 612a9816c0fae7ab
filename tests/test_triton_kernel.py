"""The Triton attention kernel, run on the CPU by the Triton interpreter, against the torch reference.

TRITON_INTERPRET must be set before triton is first imported (triton.jit decides at
decoration time whether a kernel is compiled or interpreted), so it is set at the very top.
Shapes are kept small: the interpreter runs every program of the grid in Python.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from longctx.kernels import attention, reference_attention  # noqa: E402
from longctx.kernels import triton_attention as triton_module  # noqa: E402
from kernel_cases import MASK_CASES, case_id  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TOLERANCES = {  # dtype: (out atol/rtol, lse atol)
    torch.float32: (1e-4, 1e-4),
    torch.bfloat16: (2e-2, 1e-3),
    torch.float16: (5e-3, 1e-3),
}

pytestmark = pytest.mark.skipif(
    not triton_module._kernel_is_interpreted(),
    reason="triton was imported before TRITON_INTERPRET=1 was set; the kernel cannot run on the CPU",
)


def _inputs(batch, q_heads, kv_heads, q_len, k_len, head_dim, dtype, seed, head_dim_v=None):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_heads, q_len, head_dim, generator=gen).to(dtype)
    k = torch.randn(batch, kv_heads, k_len, head_dim, generator=gen).to(dtype)
    v = torch.randn(batch, kv_heads, k_len, head_dim_v or head_dim, generator=gen).to(dtype)
    return q, k, v


def _check(q, k, v, *, causal, anchor_len=0, prefix_len=0, scale=None):
    out, lse = attention(
        q, k, v, causal=causal, anchor_len=anchor_len, prefix_len=prefix_len, scale=scale, backend="triton"
    )
    ref_out, ref_lse = reference_attention(
        q, k, v, causal=causal, anchor_len=anchor_len, prefix_len=prefix_len, scale=scale
    )
    assert out.shape == ref_out.shape and out.dtype == q.dtype
    assert lse.shape == ref_lse.shape and lse.dtype == torch.float32
    out_tol, lse_tol = TOLERANCES[q.dtype]
    # Rows that see no key must be exactly out = 0, lse = -inf, like the reference.
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))
    assert torch.all(out[torch.isneginf(lse)] == 0)
    torch.testing.assert_close(lse, ref_lse, atol=lse_tol, rtol=0)
    torch.testing.assert_close(out.float(), ref_out.float(), atol=out_tol, rtol=out_tol)
    return out, lse


@pytest.mark.parametrize("shape", MASK_CASES, ids=case_id)
def test_matches_reference_fp32(shape):
    batch, q_heads, kv_heads, q_len, k_len, head_dim, causal, anchor, prefix = shape
    q, k, v = _inputs(batch, q_heads, kv_heads, q_len, k_len, head_dim, torch.float32, seed=q_len * 1000 + k_len)
    _check(q, k, v, causal=causal, anchor_len=anchor, prefix_len=prefix)


@pytest.mark.parametrize(
    "shape",
    [
        (1, 2, 1, 7, 7, 16, True, 0, 0),
        (1, 4, 1, 130, 257, 32, True, 0, 0),
        (1, 2, 2, 257, 130, 64, True, 0, 0),
        (1, 4, 2, 130, 130, 16, False, 60, 64),
    ],
    ids=case_id,
)
def test_matches_reference_bf16(shape):
    batch, q_heads, kv_heads, q_len, k_len, head_dim, causal, anchor, prefix = shape
    q, k, v = _inputs(batch, q_heads, kv_heads, q_len, k_len, head_dim, torch.bfloat16, seed=7 + q_len)
    _check(q, k, v, causal=causal, anchor_len=anchor, prefix_len=prefix)


def test_matches_reference_fp16():
    q, k, v = _inputs(1, 4, 2, 40, 45, 32, torch.float16, seed=9)
    _check(q, k, v, causal=True, anchor_len=10, prefix_len=20)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_non_contiguous_views(causal):
    """Inputs laid out [B, S, H, D] and transposed to [B, H, S, D]; v also strided in D."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 70, 4, 32, generator=gen).transpose(1, 2)
    k = torch.randn(2, 130, 2, 32, generator=gen).transpose(1, 2)
    v = torch.randn(2, 130, 2, 64, generator=gen).transpose(1, 2)[..., ::2]
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous()) and v.stride(-1) == 2
    _check(q, k, v, causal=causal, anchor_len=20, prefix_len=30)


def test_unpadded_head_dims_and_custom_scale():
    """A head dim that is not a power of two, a different V head dim and an explicit scale."""
    q, k, v = _inputs(1, 4, 2, 33, 45, 24, torch.float32, seed=11, head_dim_v=40)
    _check(q, k, v, causal=True, scale=0.3)


def test_rows_without_keys_are_zero_with_neg_inf_lse():
    q, k, v = _inputs(1, 2, 1, 20, 5, 16, torch.float32, seed=5)
    out, lse = _check(q, k, v, causal=True)
    assert torch.all(torch.isneginf(lse[:, :, :15])) and torch.all(torch.isfinite(lse[:, :, 15:]))
    assert torch.all(out[:, :, :15] == 0)


@pytest.mark.parametrize("q_len,k_len", [(9, 0), (0, 9), (0, 0)])
def test_empty_queries_or_keys(q_len, k_len):
    q, k, v = _inputs(1, 2, 1, q_len, k_len, 16, torch.float32, seed=1)
    out, lse = attention(q, k, v, causal=True, backend="triton")
    assert out.shape == (1, 2, q_len, 16) and lse.shape == (1, 2, q_len)
    assert torch.all(out == 0) and torch.all(torch.isneginf(lse))


@pytest.mark.parametrize("blocks", [(16, 32), (64, 16)], ids=["m16n32", "m64n16"])
def test_other_block_sizes(monkeypatch, blocks):
    """The loop bounds must hold for BLOCK_M smaller and larger than BLOCK_N."""
    block_m, block_n = blocks

    def config(head_dim, dtype, on_gpu):
        return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": 4, "num_stages": 1}

    monkeypatch.setattr(triton_module, "choose_launch_config", config)
    q, k, v = _inputs(1, 2, 1, 100, 147, 16, torch.float32, seed=block_m)
    _check(q, k, v, causal=True, anchor_len=40, prefix_len=50)
    q, k, v = _inputs(1, 2, 1, 147, 100, 16, torch.float32, seed=block_n)
    _check(q, k, v, causal=True)


def test_launch_config_is_sane():
    for on_gpu in (False, True):
        for dtype in (torch.float32, torch.bfloat16):
            for head_dim in (16, 64, 128, 256):
                config = triton_module.choose_launch_config(head_dim, dtype, on_gpu)
                for key in ("BLOCK_M", "BLOCK_N"):
                    assert config[key] >= 16 and config[key] & (config[key] - 1) == 0


def test_invalid_inputs_raise():
    q, k, v = _inputs(1, 3, 2, 4, 4, 16, torch.float32, seed=0)
    with pytest.raises(ValueError, match="multiple"):
        attention(q, k, v, causal=True, backend="triton")
    q, k, v = _inputs(1, 2, 1, 4, 4, 16, torch.float32, seed=0)
    with pytest.raises(ValueError, match="dtype"):
        attention(q, k.half(), v, causal=True, backend="triton")
    with pytest.raises(ValueError, match="dtype"):
        attention(q.double(), k.double(), v.double(), causal=True, backend="triton")
    q, k, v = _inputs(1, 2, 1, 4, 4, 512, torch.float32, seed=0)
    with pytest.raises(ValueError, match="head dims"):
        attention(q, k, v, causal=True, backend="triton")


def test_auto_backend_on_cpu_does_not_import_triton():
    script = textwrap.dedent(
        """
        import sys
        import torch
        from longctx.kernels import attention
        q = torch.randn(1, 4, 9, 16)
        k = torch.randn(1, 2, 9, 16)
        attention(q, k, k, causal=True, backend="auto")
        loaded = sorted(m for m in sys.modules if m == "triton" or m.startswith("triton.")
                        or m == "longctx.kernels.triton_attention")
        assert not loaded, loaded
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
