"""Fused attention ops with log-sum-exp (PyTorch's CPU and CUDA ops, flash-attn), split into
pieces each op serves exactly: one function, `fused_attention`, for every device.

A longctx mask is, per group of query rows, a diagonal: row i sees key j iff j <= i + offset
(offset = Sk - Sq for the bottom-right causal mask; no limit when not causal). The APB rule
(queries below `anchor_len` skip the first `prefix_len` keys) cuts the rows in two groups:
anchor rows over keys [prefix_len, Sk), the others over all keys, each a diagonal. A
diagonal is at most three fused calls, none computing a score the mask hides:

    keys:            0 ....... off-1 | off ...... off+d-1 | (not seen by rows 0..d-1)
    rows 0..d-1      [  all visible  | causal, square d x d ]
    rows d..         [  every key visible (non-causal)                              ]

with d = min(rows, Sk - off); rows that see no key (off < 0) are not sent at all (out 0,
lse -inf). The pieces of one row group are merged exactly (`merge_many`, float32).

Causal alignment. A fused op's causal mask for Sq != Sk is top-left (query i sees key j iff
j <= i: PyTorch documents this for SDPA) or bottom-right (j <= i + Sk - Sq: flash-attn since
2.1, and longctx). For a square call both agree, so a top-left op gets only square causal
pieces plus the strip to their left (two calls); a bottom-right op gets the strip and the
square as one causal call of d x (off + d). Nothing relies on an alignment an op does not
document.

Which op, and why (`op_for` picks; `longctx.kernels.dispatch` decides when fused ops are used):

* CPU: `aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal, *,
  attn_mask, scale) -> (out [B, H, Sq, D], logsumexp [B, H, Sq])`: PyTorch's only CPU op that
  returns the LSE; float32/64 and 16-bit; top-left causal.
* CUDA, 16-bit, head dim a multiple of 8 up to 256, sm_80+: `aten._scaled_dot_product_flash_attention(
  q, k, v, dropout_p, is_causal, return_debug_mask, *, scale) -> (out, logsumexp [B, H, Sq], cum_seq_q,
  cum_seq_k, max_q, max_k, rng_state, unused, debug_attn_mask)`: FlashAttention-2, the op
  PyTorch's own context parallelism merges by LSE; the fastest of the three where no
  calibration says otherwise, and the one that reads GQA K/V heads by index (PyTorch routes
  `enable_gqa` to it alone).
* CUDA, `cuda_op="cudnn"` (16-bit, chosen where `longctx plan --calibrate --device cuda`
  measured it faster): `aten._scaled_dot_product_cudnn_attention(q, k, v, attn_bias,
  compute_log_sumexp, dropout_p, is_causal, return_debug_mask, *, scale) -> (out, logsumexp
  [B, H, Sq, 1], ...)`: cuDNN's fused attention, often the fastest on Hopper; K/V expanded for
  GQA (its acceptance of unequal head counts differs between PyTorch versions).
* CUDA, float32 or other head dims or parts before sm_80:
  `aten._scaled_dot_product_efficient_attention(q, k, v, attn_bias, compute_log_sumexp,
  dropout_p, is_causal, *, scale) -> (out, log_sumexp [B, H, ceil(Sq / 32) * 32], philox_seed,
  philox_offset)`: the memory-efficient kernel, the only CUDA op with LSE that takes float32;
  its LSE is padded to 32 rows (sliced off here); K/V expanded for GQA.
* flash-attn (`--kernel-backend flash-attn`, optional): `flash_attn_func(q, k, v,
  dropout_p=0.0, softmax_scale, causal, return_attn_probs=True) -> (out [B, Sq, H, D],
  softmax_lse [B, H, Sq], S_dmask)`: layout [B, S, H, D], bottom-right causal, GQA by index.

GQA: an op that reads K/V heads by index gets the KV heads as they are; whether it really
does is probed once per op and device (`reads_gqa`: the query heads beyond the first group
would read NaN-filled memory if the op ignored the head mapping); the others get K/V
repeated to the query heads, per piece.
"""

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Callable

import torch

from longctx.kernels.merge import merge_many

ATEN = torch.ops.aten  # the ops' namespace (tests put stand-ins with the same schemas here)
CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
HALF_DTYPES = (torch.bfloat16, torch.float16)
FLASH_MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class FusedOp:
    """One fused attention op with log-sum-exp.

    `call(q, k, v, causal, scale)` takes q [B, Hq, Sq, D] and k/v [B, Hk, Sk, D] (Hk == Hq
    unless the op reads GQA heads by index) and returns (out [B, Hq, Sq, D] any float dtype,
    lse [B, Hq, Sq] float32, natural log). `bottom_right`: its causal mask is bottom-right
    aligned when Sq != Sk (else only square causal pieces reach it). `gqa_native`: it claims
    to read KV head h // (Hq // Hk) for query head h (checked by `reads_gqa` before use).
    """

    name: str
    call: Callable
    bottom_right: bool
    gqa_native: bool


@dataclass(frozen=True)
class Piece:
    """One fused call: query rows [rows[0], rows[1]) over keys [keys[0], keys[1]), causal or not."""

    rows: tuple
    keys: tuple
    causal: bool


def pieces(q_len, k_len, causal, anchor_len=0, prefix_len=0, bottom_right=False):
    """The fused calls that compute a longctx mask exactly, in row order.

    Mask: query i sees key j iff (not causal or j <= i + k_len - q_len) and not (i <
    anchor_len and j < prefix_len). Every visible (query, key) pair lies in exactly one piece
    and no hidden pair in any, provided causal pieces are aligned as `bottom_right` says (a
    square causal piece is right under either alignment). Rows in no piece see no key.
    """
    offset = k_len - q_len if causal else None
    anchor_rows = min(max(0, anchor_len), q_len) if prefix_len > 0 else 0
    if anchor_rows == 0:
        return _diagonal(0, q_len, 0, k_len, offset, bottom_right)
    prefix = min(prefix_len, k_len)
    anchor = _diagonal(0, anchor_rows, prefix, k_len, None if offset is None else offset - prefix, bottom_right)
    rest = _diagonal(anchor_rows, q_len, 0, k_len, None if offset is None else offset + anchor_rows, bottom_right)
    return anchor + rest


def _diagonal(row_lo, row_hi, key_lo, key_hi, offset, bottom_right):
    """Pieces for rows row_lo.. where row row_lo + i sees keys key_lo + j, j <= i + offset
    (every key of the range when `offset` is None)."""
    rows, keys = row_hi - row_lo, key_hi - key_lo
    if rows <= 0 or keys <= 0:
        return []
    if offset is None or offset >= keys - 1:
        return [Piece((row_lo, row_hi), (key_lo, key_hi), False)]
    blind = min(rows, max(0, -offset))  # rows that see no key at all
    row_lo, rows, offset = row_lo + blind, rows - blind, offset + blind
    if rows == 0:
        return []
    diagonal = min(rows, keys - offset)  # rows below it see every key
    rows_of_diagonal = (row_lo, row_lo + diagonal)
    if bottom_right:
        out = [Piece(rows_of_diagonal, (key_lo, key_lo + offset + diagonal), True)]
    else:
        strip = [Piece(rows_of_diagonal, (key_lo, key_lo + offset), False)] if offset else []
        out = strip + [Piece(rows_of_diagonal, (key_lo + offset, key_lo + offset + diagonal), True)]
    if diagonal < rows:
        out.append(Piece((row_lo + diagonal, row_hi), (key_lo, key_hi), False))
    return out


def fused_attention(q, k, v, *, causal, anchor_len=0, prefix_len=0, scale=None, op):
    """Attention with log-sum-exp through the fused op `op` (a FusedOp), split by `pieces`.

    Same contract as `reference_attention`: q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D] (any
    strides), Hq a multiple of Hkv; bottom-right causal; queries < `anchor_len` skip keys <
    `prefix_len`. Returns out [B, Hq, Sq, D] in q.dtype and lse [B, Hq, Sq] float32; rows that
    see no key get out 0 and lse -inf. Callers check that `op` serves the call (`op_for`).
    """
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, k_len = k.shape[1], k.shape[2]
    if q_heads % kv_heads:
        raise ValueError(f"query heads ({q_heads}) must be a multiple of key/value heads ({kv_heads})")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    expand = q_heads // kv_heads if kv_heads != q_heads and not reads_gqa(op, q.device) else 1
    plan = pieces(q_len, k_len, causal, anchor_len, prefix_len, op.bottom_right)

    def run(piece):
        (row_lo, row_hi), (key_lo, key_hi) = piece.rows, piece.keys
        piece_k, piece_v = k[:, :, key_lo:key_hi], v[:, :, key_lo:key_hi]
        if expand > 1:
            piece_k, piece_v = piece_k.repeat_interleave(expand, dim=1), piece_v.repeat_interleave(expand, dim=1)
        return op.call(q[:, :, row_lo:row_hi], piece_k, piece_v, piece.causal, scale)

    if len(plan) == 1 and plan[0].rows == (0, q_len):
        out, lse = run(plan[0])
        return out.to(q.dtype), lse
    out = torch.zeros(batch, q_heads, q_len, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.full((batch, q_heads, q_len), float("-inf"), dtype=torch.float32, device=q.device)
    for (row_lo, row_hi), group in itertools.groupby(plan, key=lambda piece: piece.rows):
        part_out, part_lse = merge_many(run(piece) for piece in group)
        out[:, :, row_lo:row_hi] = part_out
        lse[:, :, row_lo:row_hi] = part_lse
    return out, lse


# --- the ops ----------------------------------------------------------------------------------


def _cpu_flash(q, k, v, causal, scale):
    out, lse = ATEN._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, attn_mask=None,
                                                                          scale=scale)
    return out, lse.float()


def _last_dim_contiguous(*tensors):
    """The tensors with unit stride in the last dim (the CUDA ops require it)."""
    return [t if t.stride(-1) == 1 else t.contiguous() for t in tensors]


def _cuda_flash(q, k, v, causal, scale):
    q, k, v = _last_dim_contiguous(q, k, v)
    out, lse = ATEN._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)[:2]
    return out, lse


def _cuda_efficient(q, k, v, causal, scale):
    q, k, v = _last_dim_contiguous(q, k, v)
    out, lse = ATEN._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, causal,
                                                                      scale=scale)[:2]
    return out, lse[..., :q.shape[2]]  # padded to a multiple of 32 rows


def _cuda_cudnn(q, k, v, causal, scale):
    q, k, v = (t.contiguous() for t in (q, k, v))
    out, lse = ATEN._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False,
                                                                  scale=scale)[:2]
    return out, lse.reshape(q.shape[:3])  # [B, H, Sq, 1]


OPS = {
    "cpu-flash": FusedOp("cpu-flash", _cpu_flash, bottom_right=False, gqa_native=True),
    "cuda-flash": FusedOp("cuda-flash", _cuda_flash, bottom_right=False, gqa_native=True),
    "cuda-efficient": FusedOp("cuda-efficient", _cuda_efficient, bottom_right=False, gqa_native=False),
    "cuda-cudnn": FusedOp("cuda-cudnn", _cuda_cudnn, bottom_right=False, gqa_native=False),
}


def flash_attn_op(flash_attn_func):
    """The FusedOp of flash-attn's `flash_attn_func` ([B, S, H, D] layout, bottom-right causal,
    GQA by index; `return_attn_probs=True` adds the LSE, and no probabilities at dropout 0)."""

    def call(q, k, v, causal, scale):
        out, lse, _ = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=0.0,
                                      softmax_scale=scale, causal=causal, return_attn_probs=True)
        return out.transpose(1, 2), lse[..., :q.shape[2]].float()

    return FusedOp("flash-attn", call, bottom_right=True, gqa_native=True)


@functools.lru_cache(maxsize=None)
def _load_flash_attn():
    try:
        from flash_attn import flash_attn_func
    except ImportError as exc:
        raise RuntimeError(f"--kernel-backend flash-attn: the flash_attn package does not import ({exc}); "
                           f"pip install -e .[flash-attn] on a CUDA machine, or choose another backend") from None
    return flash_attn_op(flash_attn_func)


def op_named(name):
    """The FusedOp called `name` (one of OPS, or "flash-attn": RuntimeError when flash_attn
    does not import)."""
    return _load_flash_attn() if name == "flash-attn" else OPS[name]


def op_for(device_type, dtype, head_dim, head_dim_v, capability=None, cuda_op="flash"):
    """Name of the fused op that serves a call exactly on `device_type` ("cpu", "cuda"), or
    None. `capability` (major, minor) of the CUDA device; `cuda_op` the preferred 16-bit CUDA
    op ("flash", "cudnn" or "flash-attn"). Pure: see the module docstring for why each op."""
    if head_dim != head_dim_v:
        return None
    if device_type == "cpu":
        return "cpu-flash" if dtype in CPU_DTYPES else None
    if device_type != "cuda" or head_dim % 8:
        return None
    if dtype in HALF_DTYPES and head_dim <= FLASH_MAX_HEAD_DIM and capability and capability >= (8, 0):
        return {"flash": "cuda-flash", "cudnn": "cuda-cudnn", "flash-attn": "flash-attn"}[cuda_op]
    if dtype in (torch.float32, *HALF_DTYPES):
        return "cuda-efficient"
    return None


@functools.lru_cache(maxsize=None)
def _probe_gqa(op, device):
    """Whether `op` reads KV head h // 4 for query head h, on `device`: the KV view holds one
    head of a four-head buffer whose other heads are NaN, so an op that indexes KV heads like
    query heads reads NaN instead (in bounds) and one that refuses unequal heads raises."""
    gen = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16  # every op takes it
    q = torch.randn(1, 4, 3, 16, generator=gen).to(device, dtype)
    buffer = torch.full((1, 4, 5, 16), float("nan"))
    buffer[:, :1] = torch.randn(1, 1, 5, 16, generator=gen)
    k = buffer.to(device, dtype)[:, :1]
    try:
        out, _ = op.call(q, k, k, False, 0.25)
    except RuntimeError:
        return False
    want, _ = op.call(q, k.expand(1, 4, 5, 16).contiguous(), k.expand(1, 4, 5, 16).contiguous(), False, 0.25)
    return bool(torch.isfinite(out).all()) and torch.allclose(out.float(), want.float(), atol=1e-2, rtol=1e-2)


def reads_gqa(op, device):
    """True when `op` reads GQA K/V heads by index on `device` (claimed and probed once)."""
    return op.gqa_native and _probe_gqa(op, torch.device(device.type, device.index) if device.index is not None
                                        else torch.device(device.type))


__all__ = ["fused_attention", "pieces", "Piece", "FusedOp", "OPS", "op_for", "op_named", "flash_attn_op",
           "reads_gqa"]
