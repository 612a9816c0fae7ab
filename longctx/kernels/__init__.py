"""Attention kernels shared by every method: `attention`, `attend_into` and the LSE merge.

Backends:
* "auto": the Triton kernel for CUDA tensors (when Triton is installed), else "torch".
* "torch": PyTorch's fused CPU flash attention wherever it serves the call exactly
  (`longctx.kernels.fused_cpu`), the chunked reference otherwise (CUDA tensors, unequal
  key/value head dims). Neither computes a score its mask hides.
* "reference": the chunked torch reference (the test oracle).
* "triton": the Triton kernel (CUDA, or the CPU under TRITON_INTERPRET=1).
The CPU paths never import Triton. Logit soft-capping (`softcap`, Gemma 2) is applied by the
reference kernel: "auto", "torch" and "reference" send such calls there; the Triton kernel
does not apply it (`applies_softcap`).
"""

from longctx.kernels.fused_cpu import fused_cpu_attention, serves
from longctx.kernels.merge import merge, merge_many
from longctx.kernels.reference import reference_attention

BACKENDS = ("auto", "torch", "reference", "triton")


def applies_softcap(backend):
    """Whether `backend` can apply logit soft-capping (every backend but "triton")."""
    return backend != "triton"


def attention(q, k, v, *, causal, anchor_len=0, prefix_len=0, scale=None, softcap=None, backend="auto"):
    """Attention with log-sum-exp; see `reference_attention` for shapes, mask rules and `softcap`.

    Returns (out [B, Hq, Sq, D] in q.dtype, lse [B, Hq, Sq] float32). `backend` is one of
    BACKENDS (see the module docstring); ValueError for any other, and for `softcap` with a
    backend that cannot apply it.
    """
    masks = dict(causal=causal, anchor_len=anchor_len, prefix_len=prefix_len, scale=scale)
    if softcap is not None:
        if not applies_softcap(backend):
            raise ValueError(f"the {backend} attention backend does not apply logit soft-capping")
        return reference_attention(q, k, v, softcap=softcap, **masks)
    if _uses_triton(q, backend):
        from longctx.kernels.triton_attention import triton_attention

        return triton_attention(q, k, v, **masks)
    if backend != "reference" and serves(q, k, v):
        return fused_cpu_attention(q, k, v, **masks)
    return reference_attention(q, k, v, **masks)


def attend_into(out, lse, q, k, v, *, causal, anchor_len=0, prefix_len=0, scale=None, softcap=None, backend="auto"):
    """Fold attention of q over k/v into a running float32 state, in place (BurstAttention's LAO).

    out [B, Hq, Sq, Dv] float32 and lse [B, Hq, Sq] float32 (any strides: row slices of a
    larger state are fine) hold the attention of these queries over the keys seen so far
    (out 0, lse -inf before the first keys). Afterwards they hold it over those keys and
    k/v, as `merge` of the two partial results would. Masks and shapes as in `attention`.
    The Triton kernel starts its online softmax from the state and writes it back (no merge
    pass); the torch and reference backends compute (out, lse) and merge.
    """
    masks = dict(causal=causal, anchor_len=anchor_len, prefix_len=prefix_len, scale=scale)
    if softcap is None and _uses_triton(q, backend):
        from longctx.kernels.triton_attention import triton_attend_into

        triton_attend_into(out, lse, q, k, v, **masks)
        return
    part_out, part_lse = attention(q, k, v, softcap=softcap, backend=backend, **masks)
    merged_out, merged_lse = merge(out, lse, part_out, part_lse)
    out.copy_(merged_out)
    lse.copy_(merged_lse)


def _uses_triton(q, backend):
    """Whether `backend` sends this call to the Triton kernel; ValueError for an unknown backend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend == "triton" or (backend == "auto" and q.is_cuda and _triton_available())


def _triton_available():
    """True when the `triton` package can be imported."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = ["attention", "attend_into", "applies_softcap", "merge", "merge_many", "reference_attention", "fused_cpu_attention", "BACKENDS"]
