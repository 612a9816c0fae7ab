"""Triton forward attention kernel with log-sum-exp output.

One kernel serves every method (see DESIGN.md section 4). It computes exactly what
`longctx.kernels.reference.reference_attention` computes:

* q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv]; any strides (views are fine).
* GQA by index: query head h reads key/value head h // (Hq // Hkv); K/V are never repeated.
* Bottom-right-aligned causal mask: query i sees key j iff j <= i + Sk - Sq.
* APB rule: queries with index < anchor_len also skip keys with index < prefix_len.
* Rows that see no key get out = 0 and lse = -inf; lse is float32 natural log.

How the kernel works, per program (one block of BLOCK_M query rows of one query head):

1. Load the query block once.
2. Work out which key range can matter at all: [lo, hi). For causal attention the keys to
   the right of the diagonal of the block's last row are skipped entirely (loop bound); for
   a query block lying wholly inside the anchor, the keys of the prefix are skipped too.
3. Split [lo, hi) into an interior [lo, full_hi) where every key is visible to every row of
   the block (no mask needed) and a boundary [full_hi, hi) that is masked element-wise
   (causal diagonal, ragged end of the keys, APB rule).
4. Walk both ranges BLOCK_N keys at a time with the online softmax, in float32, in base 2
   (scores are pre-multiplied by scale * log2(e) so exp2 can be used).
5. Normalise, convert the running max / sum into a natural-log lse and store both.

Head dims that are not a power of two (or below 16) are zero-padded by the wrapper; zero
columns change neither the scores nor the (sliced-off) output.
"""

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): exp(x) == exp2(x * LOG2E)
LN2 = 0.6931471805599453  # ln(2): log(x) == log2(x) * LN2
MAX_HEAD_DIM = 256
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _attend_key_range(
    acc, m_i, l_i,  # running output sum, row max (base 2), row sum of exp2
    q, rows,  # query block [BLOCK_M, BLOCK_D] and its row indices [BLOCK_M]
    k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
    start, stop,  # key range to walk, start is where the first block begins
    q_len, k_len, anchor_len, prefix_len, qk_scale,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """Fold keys [start, stop) into the online-softmax state (inlined into the kernel).

    With MASKED False every key in the range must be visible to every row and lie below
    k_len, so nothing is masked; with MASKED True each score is checked against the ragged
    end of the keys, the causal diagonal and the APB rule.
    """
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    # K is read transposed, [BLOCK_D, BLOCK_N], so q @ k is a plain dot. The sequence offset
    # of the first block is added in int64 so long sequences with large strides cannot wrap.
    start_64 = start.to(tl.int64)
    k_ptrs = k_base + start_64 * stride_kn + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    v_ptrs = v_base + start_64 * stride_vn + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd
    for block_start in range(start, stop, BLOCK_N):
        cols = block_start + offs_n
        if MASKED:
            in_range = cols < k_len
            k = tl.load(k_ptrs, mask=in_range[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=in_range[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        if DOT_UPCAST:
            k = k.to(tl.float32)

        scores = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]

        if MASKED:
            visible = in_range[None, :] & ~((rows[:, None] < anchor_len) & (cols[None, :] < prefix_len))
            if CAUSAL:
                visible = visible & (cols[None, :] <= rows[:, None] + (k_len - q_len))
            scores = tl.where(visible, scores, float("-inf"))

        # Online softmax. A row that has seen no visible key yet keeps max -inf; subtracting
        # 0 instead keeps exp2 at exactly 0 for it rather than producing NaN from -inf - -inf.
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(scores - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        p_v = p.to(v.dtype)  # probabilities rounded to V's precision for the second dot
        if DOT_UPCAST:
            p_v, v = p_v.to(tl.float32), v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p_v, v, input_precision=DOT_PRECISION)
        m_i = m_new
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return acc, m_i, l_i


@triton.jit
def _attention_fwd_kernel(
    Q, K, V, Out, Lse,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_lb, stride_lh, stride_lm,
    q_heads, q_len, k_len, anchor_len, prefix_len, qk_scale,
    GROUP: tl.constexpr,  # query heads per key/value head
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 inputs (no TF32 rounding)
    DOT_UPCAST: tl.constexpr,  # interpreter only: feed tl.dot float32 (it cannot dot bfloat16)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One program = BLOCK_M query rows of one (batch, query head); grid (cdiv(Sq, BLOCK_M), B * Hq)."""
    block_m = tl.program_id(0)
    batch_head = tl.program_id(1)
    batch = (batch_head // q_heads).to(tl.int64)
    head = (batch_head % q_heads).to(tl.int64)
    kv_head = head // GROUP  # GQA: index mapping, no repeated K/V

    # --- 1. the query block -------------------------------------------------------------
    first_row = block_m * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    rows = first_row + offs_m
    row_ok = rows < q_len
    offs_d = tl.arange(0, BLOCK_D)
    q_rows = Q + batch * stride_qb + head * stride_qh + first_row.to(tl.int64) * stride_qm
    q_ptrs = q_rows + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    if DOT_UPCAST:
        q = q.to(tl.float32)
    k_base = K + batch * stride_kb + kv_head * stride_kh
    v_base = V + batch * stride_vb + kv_head * stride_vh

    # --- 2. keys that can matter: [lo, hi) ----------------------------------------------
    last_row = tl.minimum(first_row + BLOCK_M, q_len) - 1
    hi = k_len
    if CAUSAL:
        # The last real row sees keys up to last_row + Sk - Sq; nothing right of it matters.
        hi = tl.maximum(tl.minimum(last_row + (k_len - q_len) + 1, k_len), 0)
    # If every row is an anchor query the whole prefix is hidden: start at its last block.
    lo = tl.where(last_row < anchor_len, tl.minimum((prefix_len // BLOCK_N) * BLOCK_N, hi), 0)

    # --- 3. interior (all visible to all rows) vs boundary (masked) ---------------------
    full_hi = k_len
    if CAUSAL:
        # The first row sees keys up to first_row + Sk - Sq, and so does every later row.
        full_hi = first_row + (k_len - q_len) + 1
    # If some rows are anchor queries and part of the prefix is in range, mask everything.
    full_hi = tl.where((first_row < anchor_len) & (lo < prefix_len), lo, full_hi)
    full_hi = tl.minimum(tl.maximum(full_hi, lo), hi)
    full_hi = lo + ((full_hi - lo) // BLOCK_N) * BLOCK_N  # whole blocks only

    # --- 4. online softmax over both ranges ---------------------------------------------
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = _attend_key_range(
        acc, m_i, l_i, q, rows, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
        lo, full_hi, q_len, k_len, anchor_len, prefix_len, qk_scale,
        CAUSAL=CAUSAL, MASKED=False, DOT_PRECISION=DOT_PRECISION, DOT_UPCAST=DOT_UPCAST,
        BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV,
    )
    acc, m_i, l_i = _attend_key_range(
        acc, m_i, l_i, q, rows, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
        full_hi, hi, q_len, k_len, anchor_len, prefix_len, qk_scale,
        CAUSAL=CAUSAL, MASKED=True, DOT_PRECISION=DOT_PRECISION, DOT_UPCAST=DOT_UPCAST,
        BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV,
    )

    # --- 5. normalise and store; rows that saw no key: out 0, lse -inf -------------------
    saw_key = l_i > 0.0
    out = acc / tl.where(saw_key, l_i, 1.0)[:, None]
    lse = tl.where(saw_key, (m_i + tl.math.log2(tl.where(saw_key, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    offs_dv = tl.arange(0, BLOCK_DV)
    o_rows = Out + batch * stride_ob + head * stride_oh + first_row.to(tl.int64) * stride_om
    o_ptrs = o_rows + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    l_ptrs = Lse + batch * stride_lb + head * stride_lh + rows.to(tl.int64) * stride_lm
    tl.store(l_ptrs, lse, mask=row_ok)


def choose_launch_config(head_dim, dtype, on_gpu):
    """Pick block sizes and launch options for a padded head dim, dtype and target.

    Returns a dict with BLOCK_M, BLOCK_N (tl.constexpr block sizes), num_warps and
    num_stages. The GPU choice targets Hopper-class parts (H100/H200); the CPU choice is for
    the Triton interpreter, where small blocks keep the tests quick while still spanning
    several key and query blocks (BLOCK_M != BLOCK_N exercises the diagonal logic).
    """
    if not on_gpu:
        return {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
    if dtype == torch.float32:
        # fp32 runs the dots in IEEE precision: keep register use moderate.
        return {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
    if head_dim <= 64:
        return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
    if head_dim <= 128:
        return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}
    return {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 8, "num_stages": 2}


def _padded_dim(dim):
    """Smallest power of two >= dim and >= 16 (tl.dot needs inner dims of at least 16)."""
    return max(16, triton.next_power_of_2(dim))


def _pad_last(x, width):
    """Zero-pad the last dim of x to `width` (a copy only when padding is needed)."""
    if x.shape[-1] == width:
        return x
    return torch.nn.functional.pad(x, (0, width - x.shape[-1]))


def _kernel_is_interpreted():
    """True when Triton was imported with TRITON_INTERPRET=1 (kernels then run on the CPU)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_attention_fwd_kernel, InterpretedFunction)


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
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k and v must be 4-D: [batch, heads, seq, head_dim]")
    batch, q_heads, q_len, head_dim = q.shape
    _, kv_heads, k_len, _ = k.shape
    head_dim_v = v.shape[-1]
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
    if not 1 <= head_dim <= MAX_HEAD_DIM or not 1 <= head_dim_v <= MAX_HEAD_DIM:
        raise ValueError(f"head dims must be in 1..{MAX_HEAD_DIM}, got {head_dim} and {head_dim_v}")
    on_gpu = q.is_cuda
    interpreted = _kernel_is_interpreted()
    if not on_gpu and not interpreted:
        raise RuntimeError("the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 before importing triton)")

    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    out = torch.zeros(batch, q_heads, q_len, head_dim_v, dtype=q.dtype, device=q.device)
    lse = torch.full((batch, q_heads, q_len), float("-inf"), dtype=torch.float32, device=q.device)
    if batch == 0 or q_heads == 0 or q_len == 0 or k_len == 0:
        return out, lse

    block_d, block_dv = _padded_dim(head_dim), _padded_dim(head_dim_v)
    qp, kp, vp = _pad_last(q, block_d), _pad_last(k, block_d), _pad_last(v, block_dv)
    op = out if block_dv == head_dim_v else torch.zeros(batch, q_heads, q_len, block_dv, dtype=q.dtype, device=q.device)
    config = choose_launch_config(block_d, q.dtype, on_gpu)
    grid = (triton.cdiv(q_len, config["BLOCK_M"]), batch * q_heads)
    _attention_fwd_kernel[grid](
        qp, kp, vp, op, lse,
        *qp.stride(), *kp.stride(), *vp.stride(), *op.stride(), *lse.stride(),
        q_heads, q_len, k_len, max(0, int(anchor_len)), max(0, int(prefix_len)), scale * LOG2E,
        GROUP=q_heads // kv_heads,
        CAUSAL=bool(causal),
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        # The interpreter multiplies bfloat16 bit patterns in tl.dot (triton-lang/triton#11584);
        # 16-bit products are exact in float32, so upcasting there changes no result.
        DOT_UPCAST=interpreted and q.dtype != torch.float32,
        BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], BLOCK_D=block_d, BLOCK_DV=block_dv,
        num_warps=config["num_warps"], num_stages=config["num_stages"],
    )
    if op is not out:
        out.copy_(op[..., :head_dim_v])
    return out, lse


__all__ = ["triton_attention", "choose_launch_config"]
