"""The Triton forward attention kernels (log-sum-exp output), read top to bottom.

One kernel serves every method (see DESIGN.md section 4). It computes exactly what
`longctx.kernels.reference.reference_attention` computes:

* q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv]; any strides (views are fine).
* GQA by index: query head h reads key/value head h // (Hq // Hkv); K/V are never repeated.
* Bottom-right-aligned causal mask: query i sees key j iff j <= i + Sk - Sq.
* APB rule: queries with index < anchor_len also skip keys with index < prefix_len.
* Rows that see no key get out = 0 and lse = -inf; lse is float32 natural log.

How a program works (one tile of BLOCK_M rows):

0. Which work. The grid is one-dimensional. A tile holds ROWS = BLOCK_M // PACK query
   positions of PACK query heads that share one key/value head (GQA packing): tile row r is
   query position r // PACK of head r % PACK, so every K/V block loaded is used by all PACK
   heads. Program ids run fastest over (batch, head pack), then over key splits, then over
   query tiles, and for causal attention the tiles go heaviest first (the last query tile
   sees the most keys), so the long programs start in the first wave and the short ones fill
   the tail.
1. Load the query tile once.
2. Work out which key range can matter at all: [lo, hi). For causal attention the keys to
   the right of the diagonal of the tile's last row are skipped entirely (loop bound); for a
   tile lying wholly inside the anchor, the keys of the prefix are skipped too.
3. Split [lo, hi) into an interior [lo, full_hi) where every key is visible to every row of
   the tile (no mask needed) and a boundary [full_hi, hi) that is masked element-wise
   (causal diagonal, ragged end of the keys, APB rule). With split-K, both ranges are clipped
   to this program's share of the keys.
4. Walk both ranges BLOCK_N keys at a time with the online softmax, in float32, in base 2
   (scores are pre-multiplied by scale * log2(e) so exp2 can be used). The softmax starts
   from zero, or, with RESUME, from a running state (out, lse) that earlier calls left:
   m = lse, l = 1, acc = out is exactly the state that produced them (BurstAttention's LAO,
   no separate merge pass).
5. Normalise, convert the running max / sum into a natural-log lse and store both.

Split-K (flash-decoding): when the grid would leave most of the GPU idle (decoding: one
query; the query pass: tens of question tokens) the key range is cut into `num_splits`
shares; each program writes a partial (out, lse) and `_combine_splits_kernel` merges them
exactly (and folds in the running state when resuming).

K/V loads: plain pointer loads (masked at the ragged end of the keys), or, with KV_TMA, tensor
descriptors (`tl.make_tensor_descriptor`: the Hopper TMA unit copies each block, padding rows
past the end with zeros). The launch planner turns KV_TMA on only where it was asked for and
the K/V layout allows it (`longctx.kernels.triton_launch`).

Head dims that are not a power of two (or below 16) are zero-padded on the inputs by the
wrapper; zero columns change neither the scores nor the output, whose extra columns are
never stored.

How the launches are planned (configurations, GQA packing, split-K shares) is
`longctx.kernels.triton_launch`; the public functions are `longctx.kernels.triton_attention`.
"""


import triton
import triton.language as tl

# Runtime ints the compiler need not specialise on (a value of 1 or a multiple of 16 would
# otherwise compile another variant of the kernel for every such length).
_LENGTH_ARGS = ["batch_packs", "head_packs", "q_len", "k_len", "anchor_len", "prefix_len",
                "num_splits", "split_len", "tune_bucket"]


@triton.jit
def _attend_key_range(
    acc, m_i, l_i,  # running output sum, row max (base 2), row sum of exp2
    q, rows,  # query tile [BLOCK_M, BLOCK_D] and the query index of each row [BLOCK_M]
    k_src, v_src,  # this head's K/V: base pointers, or tensor descriptors with KV_TMA
    stride_kn, stride_kd, stride_vn, stride_vd,
    start, stop,  # key range to walk, start is where the first block begins
    q_len, k_len, anchor_len, prefix_len, qk_scale,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    KV_TMA: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """Fold keys [start, stop) into the online-softmax state (inlined into the kernel).

    With MASKED False every key in the range must be visible to every row and lie below
    k_len, so nothing is masked; with MASKED True each score is checked against the ragged
    end of the keys, the causal diagonal and the APB rule. With KV_TMA the K/V blocks come
    through tensor descriptors (TMA on Hopper), which fill rows past k_len with zeros.
    """
    offs_n = tl.arange(0, BLOCK_N)
    if not KV_TMA:
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        # K is read transposed, [BLOCK_D, BLOCK_N], so q @ k is a plain dot. The sequence offset
        # of the first block is added in int64 so long sequences with large strides cannot wrap.
        start_64 = start.to(tl.int64)
        k_ptrs = k_src + start_64 * stride_kn + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
        v_ptrs = v_src + start_64 * stride_vn + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd
    for block_start in range(start, stop, BLOCK_N):
        cols = block_start + offs_n
        if MASKED:
            in_range = cols < k_len
        if KV_TMA:
            k = tl.trans(k_src.load([block_start, 0]))
            v = v_src.load([block_start, 0])
        elif MASKED:
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
        if not KV_TMA:
            k_ptrs += BLOCK_N * stride_kn
            v_ptrs += BLOCK_N * stride_vn
    return acc, m_i, l_i


@triton.jit
def _program_work(pid, batch_packs, num_splits, q_len, CAUSAL: tl.constexpr, ROWS: tl.constexpr):
    """(batch-head pack, key split, query tile) of program `pid`: packs vary fastest, then
    splits, then tiles; causal tiles run heaviest (last, seeing the most keys) first."""
    pack_id = pid % batch_packs
    split = (pid // batch_packs) % num_splits
    tile = pid // (batch_packs * num_splits)
    if CAUSAL:
        tile = tl.cdiv(q_len, ROWS) - 1 - tile
    return pack_id, split, tile


@triton.jit(do_not_specialize=_LENGTH_ARGS)
def _attention_fwd_kernel(
    Q, K, V, Out, Lse,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_os, stride_ob, stride_oh, stride_om, stride_od,  # stride_os: between key splits
    stride_ls, stride_lb, stride_lh, stride_lm,
    batch_packs, head_packs,  # programs per (tile, split) = batch * head_packs
    q_len, k_len, anchor_len, prefix_len, qk_scale, head_dim_v,
    num_splits, split_len,  # key shares (split-K) and keys per share (a multiple of BLOCK_N if > 1 share)
    tune_bucket,  # autotune key only (a coarse size class of the call); unused here
    GROUP: tl.constexpr,  # query heads per key/value head
    PACK: tl.constexpr,  # query heads of one group sharing a tile (divides GROUP)
    CAUSAL: tl.constexpr,
    RESUME: tl.constexpr,  # start from the running (Out, Lse) state and write it back
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 inputs (no TF32 rounding)
    DOT_UPCAST: tl.constexpr,  # interpreter only: feed tl.dot float32 (it cannot dot bfloat16)
    KV_TMA: tl.constexpr,  # K/V through tensor descriptors (needs unit stride in D, 16-byte strides)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One program = one tile (ROWS query positions x PACK heads) over one key share.

    1-D grid of batch_packs * num_splits * cdiv(q_len, BLOCK_M // PACK) programs. With
    num_splits > 1, Out/Lse are the float32 partial buffers (indexed by split via
    stride_os/stride_ls); with RESUME they hold the running float32 state on entry.
    """
    ROWS: tl.constexpr = BLOCK_M // PACK

    # --- 0. which work ---------------------------------------------------------------------
    pack_id, split, tile = _program_work(tl.program_id(0), batch_packs, num_splits, q_len, CAUSAL, ROWS)
    batch = (pack_id // head_packs).to(tl.int64)
    first_head = (pack_id % head_packs) * PACK
    kv_head = (first_head // GROUP).to(tl.int64)  # GQA: index mapping, no repeated K/V

    # --- 1. the query tile: row r is query position first_row + r // PACK of head r % PACK --
    first_row = tile * ROWS
    offs_m = tl.arange(0, BLOCK_M)
    rows = first_row + offs_m // PACK
    heads = (first_head + offs_m % PACK).to(tl.int64)
    row_ok = (rows < q_len) & (offs_m < ROWS * PACK)
    offs_d = tl.arange(0, BLOCK_D)
    q_ptrs = (Q + batch * stride_qb + heads[:, None] * stride_qh + rows.to(tl.int64)[:, None] * stride_qm
              + offs_d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    if DOT_UPCAST:
        q = q.to(tl.float32)
    k_src = K + batch * stride_kb + kv_head * stride_kh
    v_src = V + batch * stride_vb + kv_head * stride_vh
    if KV_TMA:
        k_src = tl.make_tensor_descriptor(k_src, shape=[k_len, BLOCK_D], strides=[stride_kn, 1],
                                          block_shape=[BLOCK_N, BLOCK_D])
        v_src = tl.make_tensor_descriptor(v_src, shape=[k_len, BLOCK_DV], strides=[stride_vn, 1],
                                          block_shape=[BLOCK_N, BLOCK_DV])

    # --- 2. keys that can matter: [lo, hi) ----------------------------------------------
    last_row = tl.minimum(first_row + ROWS, q_len) - 1
    hi = k_len
    if CAUSAL:
        # The last real row sees keys up to last_row + Sk - Sq; nothing right of it matters.
        hi = tl.maximum(tl.minimum(last_row + (k_len - q_len) + 1, k_len), 0)
    # If every row is an anchor query the whole prefix is hidden: start at its last block.
    lo = tl.where(last_row < anchor_len, tl.minimum((prefix_len // BLOCK_N) * BLOCK_N, hi), 0)

    # --- 3. interior (all visible to all rows) vs boundary (masked), clipped to the split --
    full_hi = k_len
    if CAUSAL:
        # The first row sees keys up to first_row + Sk - Sq, and so does every later row.
        full_hi = first_row + (k_len - q_len) + 1
    # If some rows are anchor queries and part of the prefix is in range, mask everything.
    full_hi = tl.where((first_row < anchor_len) & (lo < prefix_len), lo, full_hi)
    full_hi = tl.minimum(tl.maximum(full_hi, lo), hi)
    full_hi = lo + ((full_hi - lo) // BLOCK_N) * BLOCK_N  # whole blocks only
    share_lo = split * split_len
    share_hi = share_lo + split_len

    # --- 4. online softmax over both ranges, from zero or from the running state ----------
    l_ptrs = Lse + split.to(tl.int64) * stride_ls + batch * stride_lb + heads * stride_lh + rows.to(tl.int64) * stride_lm
    offs_dv = tl.arange(0, BLOCK_DV)
    out_mask = row_ok[:, None] & (offs_dv[None, :] < head_dim_v)
    o_ptrs = (Out + split.to(tl.int64) * stride_os + batch * stride_ob + heads[:, None] * stride_oh
              + rows.to(tl.int64)[:, None] * stride_om + offs_dv[None, :] * stride_od)
    if RESUME:
        # (out, lse) is exactly the state m = lse (base 2), l = 1, acc = out: the loop goes on
        # from it. acc is live through the loop either way, so this costs no registers
        # (folding out in after the loop would hold out and acc at once, and spills).
        lse_in = tl.load(l_ptrs, mask=row_ok, other=float("-inf"))
        resumed = lse_in > float("-inf")
        m_i = tl.where(resumed, lse_in * 1.4426950408889634, float("-inf"))
        l_i = tl.where(resumed, 1.0, 0.0)
        acc = tl.load(o_ptrs, mask=out_mask, other=0.0).to(tl.float32)  # 0 where lse is -inf
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = _attend_key_range(
        acc, m_i, l_i, q, rows, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd,
        tl.maximum(lo, share_lo), tl.minimum(full_hi, share_hi), q_len, k_len, anchor_len, prefix_len, qk_scale,
        CAUSAL=CAUSAL, MASKED=False, DOT_PRECISION=DOT_PRECISION, DOT_UPCAST=DOT_UPCAST, KV_TMA=KV_TMA,
        BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV,
    )
    acc, m_i, l_i = _attend_key_range(
        acc, m_i, l_i, q, rows, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd,
        tl.maximum(full_hi, share_lo), tl.minimum(hi, share_hi), q_len, k_len, anchor_len, prefix_len, qk_scale,
        CAUSAL=CAUSAL, MASKED=True, DOT_PRECISION=DOT_PRECISION, DOT_UPCAST=DOT_UPCAST, KV_TMA=KV_TMA,
        BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV,
    )

    # --- 5. normalise and store; rows that saw no key: out 0, lse -inf -------------------
    saw_key = l_i > 0.0
    l_safe = tl.where(saw_key, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(saw_key, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=out_mask)
    tl.store(l_ptrs, lse, mask=row_ok)


@triton.jit(do_not_specialize=["q_heads", "q_len", "num_splits"])
def _combine_splits_kernel(
    Part, PartLse, Out, Lse,
    stride_ps, stride_pls,  # split strides of the contiguous partials [S, B*Hq*Sq, BLOCK_DV], [S, B*Hq*Sq]
    stride_ob, stride_oh, stride_om, stride_od,
    stride_lb, stride_lh, stride_lm,
    q_heads, q_len, head_dim_v, num_splits,
    RESUME: tl.constexpr,  # merge the running (Out, Lse) state in as one more part
    BLOCK_DV: tl.constexpr,
):
    """Merge the split partials of one query row exactly: lse = logaddexp over splits,
    out = sum of exp(lse_s - lse) * out_s. One program per (batch, head, query row)."""
    row = tl.program_id(0).to(tl.int64)
    batch = row // (q_heads * q_len)
    head = (row // q_len) % q_heads
    pos = row % q_len
    offs = tl.arange(0, BLOCK_DV)
    col_ok = offs < head_dim_v
    o_ptrs = Out + batch * stride_ob + head * stride_oh + pos * stride_om + offs * stride_od
    l_ptr = Lse + batch * stride_lb + head * stride_lh + pos * stride_lm
    if RESUME:
        m = tl.load(l_ptr)
        total = tl.where(m > float("-inf"), 1.0, 0.0)
        acc = tl.load(o_ptrs, mask=col_ok, other=0.0).to(tl.float32)
        acc = tl.where(m > float("-inf"), acc, 0.0)
    else:
        m = tl.full([], float("-inf"), dtype=tl.float32)
        total = tl.zeros([], dtype=tl.float32)
        acc = tl.zeros([BLOCK_DV], dtype=tl.float32)
    for split in range(num_splits):
        part_lse = tl.load(PartLse + split * stride_pls + row)
        part = tl.load(Part + split * stride_ps + row * BLOCK_DV + offs)
        m_new = tl.maximum(m, part_lse)
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_shift)
        weight = tl.exp(part_lse - m_shift)
        acc = acc * alpha + weight * part
        total = total * alpha + weight
        m = m_new
    seen = total > 0.0
    total_safe = tl.where(seen, total, 1.0)
    tl.store(o_ptrs, (acc / total_safe).to(Out.dtype.element_ty), mask=col_ok)
    tl.store(l_ptr, tl.where(seen, m + tl.log(total_safe), float("-inf")))


def _kernel_is_interpreted():
    """True when Triton was imported with TRITON_INTERPRET=1 (kernels then run on the CPU)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_attention_fwd_kernel, InterpretedFunction)


def _backport_interpreter_index():
    """Let older Triton interpreters take tensor loop bounds under NumPy >= 2.4.

    The interpreter holds scalars as arrays of shape (1,). Triton 3.6 converts a loop bound
    with int(array), which NumPy 2.4 rejects; later Triton squeezes the array first. This
    applies that same change (only to interpreted kernels; compiled ones never see it).
    """
    import inspect

    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or "squeeze" in inspect.getsource(original) or getattr(original, "squeezes", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch_lang_tensor.squeezes = True
    interpreter._patch_lang_tensor = patch_lang_tensor


if _kernel_is_interpreted():
    _backport_interpreter_index()
