"""Attention kernels shared by every method: one `attention` entry point and the LSE merge.

`attention` dispatches to the Triton kernel for CUDA tensors (when Triton is installed) and to
the torch reference otherwise; `backend` forces one ("torch" or "triton").
"""

from longctx.kernels.merge import merge, merge_many
from longctx.kernels.reference import reference_attention

BACKENDS = ("auto", "torch", "triton")


def attention(q, k, v, *, causal, anchor_len=0, prefix_len=0, scale=None, backend="auto"):
    """Attention with log-sum-exp; see `reference_attention` for shapes and mask rules.

    Returns (out [B, Hq, Sq, D] in q.dtype, lse [B, Hq, Sq] float32). `backend="auto"` uses
    Triton on CUDA tensors and the torch reference on CPU; the CPU path never imports Triton.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    use_triton = backend == "triton" or (backend == "auto" and q.is_cuda and _triton_available())
    if use_triton:
        from longctx.kernels.triton_attention import triton_attention

        return triton_attention(q, k, v, causal=causal, anchor_len=anchor_len, prefix_len=prefix_len, scale=scale)
    return reference_attention(q, k, v, causal=causal, anchor_len=anchor_len, prefix_len=prefix_len, scale=scale)


def _triton_available():
    """True when the `triton` package can be imported."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = ["attention", "merge", "merge_many", "reference_attention", "BACKENDS"]
