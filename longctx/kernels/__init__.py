"""Attention kernels shared by every method: `attention`, `attend_into` and the LSE merge.

Every kernel computes what `reference_attention` computes (bottom-right causal, GQA, the APB
rule, out 0 / lse -inf for rows that see no key) and none computes a score its mask hides,
except the reference itself: it computes every score of the chunk of rows it works on and
masks the hidden ones (chunks straddling the causal diagonal), which is why it is the oracle
and not a production path. Which kernel serves a call: `longctx.kernels.dispatch` (backends
"auto", "torch", "flash-attn", "triton", "reference"); the fused ops and how a mask is split
for them: `longctx.kernels.fused`; the Triton kernel: `longctx.kernels.triton_attention`.
The CPU paths never import Triton. Logit soft-capping (`softcap`, Gemma 2) is applied by the
reference kernel: "auto", "torch" and "reference" send such calls there; the other backends
do not apply it (`applies_softcap`).
"""

from longctx.kernels.dispatch import BACKENDS, CallShape, choose, triton_available
from longctx.kernels.fused import fused_attention, op_named
from longctx.kernels.merge import merge, merge_many
from longctx.kernels.reference import reference_attention


def applies_softcap(backend):
    """Whether `backend` can apply logit soft-capping (it then runs the reference kernel)."""
    return backend in ("auto", "torch", "reference")


def attention(q, k, v, *, causal, anchor_len=0, prefix_len=0, scale=None, softcap=None, backend="auto"):
    """Attention with log-sum-exp; see `reference_attention` for shapes, mask rules and `softcap`.

    Returns (out [B, Hq, Sq, D] in q.dtype, lse [B, Hq, Sq] float32). `backend` is one of
    BACKENDS (see `longctx.kernels.dispatch`); ValueError for any other, and for `softcap` with
    a backend that cannot apply it; RuntimeError for "flash-attn" when the flash_attn package
    does not import.
    """
    masks = dict(causal=causal, anchor_len=anchor_len, prefix_len=prefix_len, scale=scale)
    if softcap is not None:
        if not applies_softcap(backend):
            raise ValueError(f"the {backend} attention backend does not apply logit soft-capping")
        return reference_attention(q, k, v, softcap=softcap, **masks)
    return _run(_choice(q, k, v, backend, masks, resume=False), q, k, v, masks)


def attend_into(out, lse, q, k, v, *, causal, anchor_len=0, prefix_len=0, scale=None, softcap=None, backend="auto"):
    """Fold attention of q over k/v into a running float32 state, in place (BurstAttention's LAO).

    out [B, Hq, Sq, Dv] float32 and lse [B, Hq, Sq] float32 (any strides: row slices of a
    larger state are fine) hold the attention of these queries over the keys seen so far
    (out 0, lse -inf before the first keys). Afterwards they hold it over those keys and
    k/v, as `merge` of the two partial results would. Masks and shapes as in `attention`.
    The Triton kernel starts its online softmax from the state and writes it back (no merge
    pass); the other kernels compute (out, lse) and merge.
    """
    masks = dict(causal=causal, anchor_len=anchor_len, prefix_len=prefix_len, scale=scale)
    if softcap is not None:
        part = attention(q, k, v, softcap=softcap, backend=backend, **masks)
    else:
        choice = _choice(q, k, v, backend, masks, resume=True)
        if choice.kernel == "triton":
            from longctx.kernels.triton_attention import triton_attend_into

            triton_attend_into(out, lse, q, k, v, **masks)
            return
        part = _run(choice, q, k, v, masks)
    merged_out, merged_lse = merge(out, lse, *part)
    out.copy_(merged_out)
    lse.copy_(merged_lse)


def _run(choice, q, k, v, masks):
    """(out, lse) of the call with the chosen kernel."""
    if choice.kernel == "triton":
        from longctx.kernels.triton_attention import triton_attention

        return triton_attention(q, k, v, **masks)
    if choice.kernel == "fused":
        return fused_attention(q, k, v, op=op_named(choice.op), **masks)
    return reference_attention(q, k, v, **masks)


def _choice(q, k, v, backend, masks, resume):
    """The dispatch `Choice` for this call (the device's calibration read only for "auto" on CUDA)."""
    call = CallShape.of(q, k, v, causal=masks["causal"], anchor_len=masks["anchor_len"],
                        prefix_len=masks["prefix_len"], resume=resume)
    calibration = ()
    if backend == "auto" and call.device == "cuda":
        from longctx.kernels.calibration import entries_for

        calibration = entries_for(q.device)
    if backend == "flash-attn":
        op_named("flash-attn")  # one clear error when flash_attn does not import, on any device
    return choose(backend, call, calibration, triton_available() if call.device == "cuda" or backend == "triton"
                  else False)


__all__ = ["attention", "attend_into", "applies_softcap", "merge", "merge_many", "reference_attention", "fused_attention", "BACKENDS"]
