"""The Triton attention kernel's public functions: `triton_attention` and `triton_attend_into`.

Both compute exactly what `longctx.kernels.reference.reference_attention` computes (see
DESIGN.md section 4): q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv], any strides;
GQA by index (K/V never repeated); bottom-right causal; the APB rule; out 0 and lse -inf for
rows that see no key. The kernels are `longctx.kernels.triton_kernels`, their launches
`longctx.kernels.triton_launch`.
"""

import math

import torch

from longctx.kernels.triton_launch import build_launches, run_launch, target_for

MAX_HEAD_DIM = 256
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_inputs(q, k, v):
    """Validate shapes, dtypes, devices and head dims (ValueError / RuntimeError)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k and v must be 4-D: [batch, heads, seq, head_dim]")
    batch, q_heads, _, head_dim = q.shape
    kv_heads = k.shape[1]
    if k.shape[0] != batch or k.shape[-1] != head_dim:
        raise ValueError(f"k shape {tuple(k.shape)} does not match q shape {tuple(q.shape)}")
    if tuple(v.shape[:3]) != tuple(k.shape[:3]):
        raise ValueError(f"v shape {tuple(v.shape)} does not match k shape {tuple(k.shape)}")
    if kv_heads == 0 or q_heads % kv_heads:
        raise ValueError(f"query heads ({q_heads}) must be a multiple of key/value heads ({kv_heads})")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"unsupported dtype {q.dtype}; use float16, bfloat16 or float32")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    if k.device != q.device or v.device != q.device:
        raise ValueError("q, k and v must be on the same device")
    if not 1 <= head_dim <= MAX_HEAD_DIM or not 1 <= v.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"head dims must be in 1..{MAX_HEAD_DIM}, got {head_dim} and {v.shape[-1]}")


def triton_attention(q, k, v, *, causal, anchor_len=0, prefix_len=0, scale=None):
    """Attention of `q` over `k`/`v` with the Triton kernel, returning `(out, lse)`.

    Same contract as `reference_attention`: q [B, Hq, Sq, D], k [B, Hkv, Sk, D],
    v [B, Hkv, Sk, Dv] with Hq a multiple of Hkv (query head h reads KV head
    h // (Hq // Hkv)); any strides. `causal` is bottom-right aligned (query i sees key j iff
    j <= i + Sk - Sq); queries with index < `anchor_len` also skip keys with index <
    `prefix_len`. `scale` defaults to 1 / sqrt(D). Returns out [B, Hq, Sq, Dv] in q.dtype
    and lse [B, Hq, Sq] float32 (natural log); rows that see no key get out = 0, lse = -inf.
    Accumulates in float32; float32 inputs use IEEE (not TF32) dot products.

    Needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before Triton is
    imported. Raises ValueError for mismatched shapes/dtypes/devices, unsupported dtypes
    (float16, bfloat16, float32 only) or head dims above 256.
    """
    _check_inputs(q, k, v)
    target = target_for(q)
    batch, q_heads, q_len, head_dim = q.shape
    out = torch.zeros(batch, q_heads, q_len, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.full((batch, q_heads, q_len), float("-inf"), dtype=torch.float32, device=q.device)
    if batch == 0 or q_heads == 0 or q_len == 0 or k.shape[2] == 0:
        return out, lse
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    for launch in build_launches(q, k, v, out, lse, causal=causal, anchor_len=anchor_len, prefix_len=prefix_len,
                                 scale=scale, resume=False, target=target):
        run_launch(launch)
    return out, lse


def triton_attend_into(out, lse, q, k, v, *, causal, anchor_len=0, prefix_len=0, scale=None):
    """Fold attention of `q` over `k`/`v` into the running state (out, lse), in place.

    out [B, Hq, Sq, Dv] float32 and lse [B, Hq, Sq] float32 (any strides, e.g. row slices of
    a larger state) hold the normalised attention of these queries over the keys seen so
    far (out 0, lse -inf where none). Afterwards they hold it over those keys and k/v,
    exactly as `merge` of the two would: the kernel starts its online softmax from the state
    instead of from zero. Masks and shapes as in `triton_attention`.
    """
    _check_inputs(q, k, v)
    batch, q_heads, q_len, head_dim = q.shape
    if out.shape != (batch, q_heads, q_len, v.shape[-1]) or lse.shape != (batch, q_heads, q_len):
        raise ValueError(f"state shapes {tuple(out.shape)}, {tuple(lse.shape)} do not match q {tuple(q.shape)}")
    if out.dtype != torch.float32 or lse.dtype != torch.float32:
        raise ValueError("the running state (out, lse) must be float32")
    target = target_for(q)
    if batch == 0 or q_heads == 0 or q_len == 0 or k.shape[2] == 0:
        return
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    for launch in build_launches(q, k, v, out, lse, causal=causal, anchor_len=anchor_len, prefix_len=prefix_len,
                                 scale=scale, resume=True, target=target):
        run_launch(launch)


__all__ = ["triton_attention", "triton_attend_into", "SUPPORTED_DTYPES", "MAX_HEAD_DIM"]
