"""Attention kernels shared by every method: one `attention` entry point and the LSE merge.

Backends:
* "auto": the Triton kernel for CUDA tensors (when Triton is installed), else "torch".
* "torch": PyTorch's fused CPU flash attention wherever it serves the call exactly
  (`longctx.kernels.fused_cpu`), the chunked reference otherwise (CUDA tensors, unequal
  key/value head dims). Neither computes a score its mask hides.
* "reference": the chunked torch reference (the test oracle).
* "triton": the Triton kernel (CUDA, or the CPU under TRITON_INTERPRET=1).
The CPU paths never import Triton.
"""

from longctx.kernels.fused_cpu import fused_cpu_attention, serves
from longctx.kernels.merge import merge, merge_many
from longctx.kernels.reference import reference_attention

BACKENDS = ("auto", "torch", "reference", "triton")


def attention(q, k, v, *, causal, anchor_len=0, prefix_len=0, scale=None, backend="auto"):
    """Attention with log-sum-exp; see `reference_attention` for shapes and mask rules.

    Returns (out [B, Hq, Sq, D] in q.dtype, lse [B, Hq, Sq] float32). `backend` is one of
    BACKENDS (see the module docstring); ValueError for any other.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    masks = dict(causal=causal, anchor_len=anchor_len, prefix_len=prefix_len, scale=scale)
    if backend == "triton" or (backend == "auto" and q.is_cuda and _triton_available()):
        from longctx.kernels.triton_attention import triton_attention

        return triton_attention(q, k, v, **masks)
    if backend != "reference" and serves(q, k, v):
        return fused_cpu_attention(q, k, v, **masks)
    return reference_attention(q, k, v, **masks)


def _triton_available():
    """True when the `triton` package can be imported."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = ["attention", "merge", "merge_many", "reference_attention", "fused_cpu_attention", "BACKENDS"]
