"""Triton forward attention kernel with log-sum-exp output.

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

Head dims that are not a power of two (or below 16) are zero-padded on the inputs by the
wrapper; zero columns change neither the scores nor the output, whose extra columns are
never stored.

The launch plan (`plan_launch`) is a pure function of the shapes, dtype and `Target`; the
runtime and the ahead-of-time compile test (`tests/test_triton_compile.py`) both build their
launches with `build_launches`, so the test compiles what runs.
"""

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): exp(x) == exp2(x * LOG2E)
MAX_HEAD_DIM = 256
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Runtime ints the compiler need not specialise on (a value of 1 or a multiple of 16 would
# otherwise compile another variant of the kernel for every such length).
_LENGTH_ARGS = ["batch_packs", "head_packs", "q_len", "k_len", "anchor_len", "prefix_len",
                "num_splits", "split_len", "tune_bucket"]


@triton.jit
def _attend_key_range(
    acc, m_i, l_i,  # running output sum, row max (base 2), row sum of exp2
    q, rows,  # query tile [BLOCK_M, BLOCK_D] and the query index of each row [BLOCK_M]
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
    k_base = K + batch * stride_kb + kv_head * stride_kh
    v_base = V + batch * stride_vb + kv_head * stride_vh

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
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    if RESUME:
        # (out, lse) is exactly the state m = lse (base 2), l = 1, acc = out. The out part
        # is only ever rescaled, so it joins after the loop (step 5), keeping registers free.
        lse_in = tl.load(l_ptrs, mask=row_ok, other=float("-inf"))
        resumed = lse_in > float("-inf")
        m_i = tl.where(resumed, lse_in * 1.4426950408889634, float("-inf"))
        l_i = tl.where(resumed, 1.0, 0.0)
        m_start = m_i
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, m_i, l_i = _attend_key_range(
        acc, m_i, l_i, q, rows, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
        tl.maximum(lo, share_lo), tl.minimum(full_hi, share_hi), q_len, k_len, anchor_len, prefix_len, qk_scale,
        CAUSAL=CAUSAL, MASKED=False, DOT_PRECISION=DOT_PRECISION, DOT_UPCAST=DOT_UPCAST,
        BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV,
    )
    acc, m_i, l_i = _attend_key_range(
        acc, m_i, l_i, q, rows, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
        tl.maximum(full_hi, share_lo), tl.minimum(hi, share_hi), q_len, k_len, anchor_len, prefix_len, qk_scale,
        CAUSAL=CAUSAL, MASKED=True, DOT_PRECISION=DOT_PRECISION, DOT_UPCAST=DOT_UPCAST,
        BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV,
    )

    # --- 5. normalise and store; rows that saw no key: out 0, lse -inf -------------------
    offs_dv = tl.arange(0, BLOCK_DV)
    out_mask = row_ok[:, None] & (offs_dv[None, :] < head_dim_v)
    o_ptrs = (Out + split.to(tl.int64) * stride_os + batch * stride_ob + heads[:, None] * stride_oh
              + rows.to(tl.int64)[:, None] * stride_om + offs_dv[None, :] * stride_od)
    if RESUME:
        # The running output, rescaled as the loop rescaled acc: by exp2(m_start - m_final).
        out_in = tl.load(o_ptrs, mask=out_mask, other=0.0).to(tl.float32)
        rescale = tl.where(resumed, tl.math.exp2(m_start - tl.where(resumed, m_i, 0.0)), 0.0)
        acc += out_in * rescale[:, None]
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


# --- launch planning ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a launch plan depends on besides the shapes: the CUDA compute capability as
    10 * major + minor (80, 90; 0 = the Triton interpreter) and the number of SMs."""

    arch: int
    num_sms: int

    @property
    def interpreted(self):
        return self.arch == 0


# The interpreter pretends to be a small GPU so that test shapes exercise split-K.
INTERPRETER = Target(arch=0, num_sms=4)
MAX_SPLITS = 64


@functools.lru_cache(maxsize=None)
def gpu_target(device_index):
    """The `Target` of a CUDA device (compute capability and SM count)."""
    props = torch.cuda.get_device_properties(device_index)
    return Target(arch=10 * props.major + props.minor, num_sms=props.multi_processor_count)


def _config(block_m, block_n, num_warps, num_stages):
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps, "num_stages": num_stages}


def tune_configs(target, dtype, block_d, block_dv):
    """Candidate configurations (BLOCK_M, BLOCK_N, num_warps, num_stages) of the main kernel
    for padded head dims on `target`; more than one means the runtime autotunes among them.

    The interpreter gets one small configuration that still spans several key and query
    blocks (BLOCK_M != BLOCK_N exercises the diagonal logic). On GPUs the 16-bit tiles have
    BLOCK_M >= 64 (a Hopper warpgroup MMA) and the candidates are few, so autotuning
    compiles little; float32 runs IEEE dots on the FMA units, whose operands live in
    registers, so its tiles are small enough not to spill. Every configuration fits the
    shared memory of its part without spilling (tests/test_triton_compile.py,
    benchmarks/kernel_report.py).
    """
    if target.interpreted:
        return [_config(32, 16, 4, 1)]
    width = max(block_d, block_dv)
    if dtype == torch.float32:
        return [_fp32_config(width)]
    if target.arch >= 90:
        if width <= 64:
            return [_config(128, 64, 4, 3), _config(128, 128, 8, 3)]
        if width <= 128:
            return [_config(128, 64, 8, 3), _config(128, 128, 8, 2), _config(64, 64, 4, 3)]
        return [_config(128, 32, 8, 2), _config(64, 64, 8, 2)]
    if width <= 64:
        return [_config(128, 64, 8, 3), _config(64, 64, 4, 3)]
    if width <= 128:
        return [_config(128, 64, 8, 2), _config(64, 64, 8, 2)]
    return [_config(64, 32, 8, 2)]


def split_config(target, dtype, block_d, block_dv):
    """The one configuration of the split-K path (few query rows, many keys): a 64-row tile
    (the smallest Hopper warpgroup MMA) and key blocks sized to the head dim."""
    if target.interpreted:
        return _config(32, 16, 4, 1)
    width = max(block_d, block_dv)
    if dtype == torch.float32:
        return _fp32_config(width)
    if width > 128:
        return _config(64, 32, 8, 2)
    return _config(64, 64, 4, 3) if target.arch >= 90 else _config(64, 32, 4, 3)


def _fp32_config(width):
    """float32 on a GPU: one spill-free configuration per head-dim class."""
    if width <= 64:
        return _config(32, 32, 4, 2)
    if width <= 128:
        return _config(32, 16, 4, 2)
    return _config(32, 16, 8, 2)


def choose_pack(group, block_m):
    """Query heads packed into one tile: the largest divisor of the GQA group that is at
    most `block_m` (the smallest BLOCK_M the call may use), so a tile holds >= 1 position."""
    return max(d for d in range(1, min(group, block_m) + 1) if group % d == 0)


def choose_splits(programs, key_blocks, target):
    """Key shares per tile: 1 unless the grid (`programs` without splitting) fills fewer
    than one wave of the target's SMs; then enough shares for about two waves, each share
    at least a few key blocks (2 in the interpreter, 4 on GPUs), at most MAX_SPLITS."""
    if programs >= target.num_sms:
        return 1
    min_blocks = 2 if target.interpreted else 4
    return max(1, min(triton.cdiv(2 * target.num_sms, programs), key_blocks // min_blocks, MAX_SPLITS))


@dataclass(frozen=True)
class LaunchPlan:
    """How one attention call runs: GQA packing, main-kernel configurations (autotuned when
    more than one), and the split-K shares (`splits` == 1: no split, no combine kernel)."""

    pack: int
    configs: tuple
    splits: int
    split_len: int


def plan_launch(batch, q_heads, kv_heads, q_len, k_len, block_d, block_dv, dtype, target):
    """The `LaunchPlan` for one call; a pure function of its arguments (see `Target`)."""
    candidates = tune_configs(target, dtype, block_d, block_dv)
    split = split_config(target, dtype, block_d, block_dv)
    pack = choose_pack(q_heads // kv_heads, min(c["BLOCK_M"] for c in (*candidates, split)))
    tiles = triton.cdiv(q_len, split["BLOCK_M"] // pack)
    key_blocks = triton.cdiv(k_len, split["BLOCK_N"])
    splits = choose_splits(batch * (q_heads // pack) * tiles, key_blocks, target)
    if splits == 1:
        return LaunchPlan(pack, tuple(candidates), 1, k_len)  # one share: all keys
    blocks_per_split = triton.cdiv(key_blocks, splits)
    splits = triton.cdiv(key_blocks, blocks_per_split)  # no empty shares
    return LaunchPlan(pack, (split,), splits, blocks_per_split * split["BLOCK_N"])


@dataclass
class Launch:
    """One kernel launch: the jitted function, its arguments (runtime values and constexprs
    except the tuned ones), the candidate configurations and the grid for a configuration."""

    kernel: object
    args: dict
    configs: tuple
    grid: object  # config dict -> grid tuple

    @property
    def name(self):
        return self.kernel.__name__


def _padded_dim(dim):
    """Smallest power of two >= dim and >= 16 (tl.dot needs inner dims of at least 16)."""
    return max(16, triton.next_power_of_2(dim))


def _pad_last(x, width):
    """Zero-pad the last dim of x to `width` (a copy only when padding is needed)."""
    if x.shape[-1] == width:
        return x
    return torch.nn.functional.pad(x, (0, width - x.shape[-1]))


def _tune_bucket(q_len, k_len):
    """A coarse size class of a call (log2 of both lengths): the autotune key, so a new
    length retunes only when it changes class."""
    return 64 * q_len.bit_length() + k_len.bit_length()


def build_launches(q, k, v, out, lse, *, causal, anchor_len, prefix_len, scale, resume, target):
    """The launches that compute attention of q over k/v into (out, lse), per `plan_launch`.

    q, k, v as in `triton_attention`; out [B, Hq, Sq, Dv] and lse [B, Hq, Sq] are written
    (with `resume`, they hold the running float32 state and are updated in place). Works on
    meta tensors too: the compile test builds the very launches the runtime would run.
    Allocates the zero-padded inputs and the split-K partials.
    """
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, k_len, head_dim_v = k.shape[1], k.shape[2], v.shape[-1]
    block_d, block_dv = _padded_dim(head_dim), _padded_dim(head_dim_v)
    qp, kp, vp = _pad_last(q, block_d), _pad_last(k, block_d), _pad_last(v, block_dv)
    plan = plan_launch(batch, q_heads, kv_heads, q_len, k_len, block_d, block_dv, q.dtype, target)
    if plan.splits > 1:
        rows = batch * q_heads * q_len
        part = torch.empty(plan.splits, rows, block_dv, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(plan.splits, rows, dtype=torch.float32, device=q.device)
        dest = part.view(plan.splits, batch, q_heads, q_len, block_dv)
        dest_lse = part_lse.view(plan.splits, batch, q_heads, q_len)
        dest_strides, dest_lse_strides = dest.stride(), dest_lse.stride()
    else:
        dest, dest_lse = out, lse
        dest_strides, dest_lse_strides = (0, *out.stride()), (0, *lse.stride())
    batch_packs = batch * (q_heads // plan.pack)
    main = Launch(
        kernel=_attention_fwd_kernel,
        args=dict(
            Q=qp, K=kp, V=vp, Out=dest, Lse=dest_lse,
            stride_qb=qp.stride(0), stride_qh=qp.stride(1), stride_qm=qp.stride(2), stride_qd=qp.stride(3),
            stride_kb=kp.stride(0), stride_kh=kp.stride(1), stride_kn=kp.stride(2), stride_kd=kp.stride(3),
            stride_vb=vp.stride(0), stride_vh=vp.stride(1), stride_vn=vp.stride(2), stride_vd=vp.stride(3),
            stride_os=dest_strides[0], stride_ob=dest_strides[1], stride_oh=dest_strides[2],
            stride_om=dest_strides[3], stride_od=dest_strides[4],
            stride_ls=dest_lse_strides[0], stride_lb=dest_lse_strides[1], stride_lh=dest_lse_strides[2],
            stride_lm=dest_lse_strides[3],
            batch_packs=batch_packs, head_packs=q_heads // plan.pack,
            q_len=q_len, k_len=k_len, anchor_len=max(0, int(anchor_len)), prefix_len=max(0, int(prefix_len)),
            qk_scale=scale * LOG2E, head_dim_v=head_dim_v if plan.splits == 1 else block_dv,
            num_splits=plan.splits, split_len=plan.split_len, tune_bucket=_tune_bucket(q_len, k_len),
            GROUP=q_heads // kv_heads, PACK=plan.pack, CAUSAL=bool(causal), RESUME=bool(resume) and plan.splits == 1,
            DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            # The interpreter multiplies bfloat16 bit patterns in tl.dot (triton-lang/triton#11584);
            # 16-bit products are exact in float32, so upcasting there changes no result.
            DOT_UPCAST=target.interpreted and q.dtype != torch.float32,
            BLOCK_D=block_d, BLOCK_DV=block_dv,
        ),
        configs=plan.configs,
        grid=lambda config: (batch_packs * plan.splits * triton.cdiv(q_len, config["BLOCK_M"] // plan.pack),),
    )
    if plan.splits == 1:
        return [main]
    combine = Launch(
        kernel=_combine_splits_kernel,
        args=dict(
            Part=part, PartLse=part_lse, Out=out, Lse=lse,
            stride_ps=part.stride(0), stride_pls=part_lse.stride(0),
            stride_ob=out.stride(0), stride_oh=out.stride(1), stride_om=out.stride(2), stride_od=out.stride(3),
            stride_lb=lse.stride(0), stride_lh=lse.stride(1), stride_lm=lse.stride(2),
            q_heads=q_heads, q_len=q_len, head_dim_v=head_dim_v, num_splits=plan.splits,
            RESUME=bool(resume), BLOCK_DV=block_dv,
        ),
        configs=({"num_warps": 1 if block_dv <= 64 else 2, "num_stages": 1},),
        grid=lambda config: (batch * q_heads * q_len,),
    )
    return [main, combine]


@functools.lru_cache(maxsize=None)
def _autotuned(kernel):
    """`kernel` under triton.autotune: the candidates come from `tune_configs` on every call
    (the pruning hook), the key is the head dims, GQA packing, mask kind, state and size
    class, and the output (the running state when resuming) is restored after each trial."""

    def candidates(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        q = args["Q"]
        return [_as_triton_config(c) for c in tune_configs(_target_for(q), q.dtype, args["BLOCK_D"], args["BLOCK_DV"])]

    every_config = [_as_triton_config(_config(m, n, w, s)) for m in (32, 64, 128) for n in (32, 64, 128)
                    for w in (4, 8) for s in (1, 2, 3)]
    return triton.autotune(
        configs=every_config,
        key=["BLOCK_D", "BLOCK_DV", "GROUP", "PACK", "CAUSAL", "RESUME", "tune_bucket"],
        prune_configs_by={"early_config_prune": candidates},
        restore_value=["Out", "Lse"],
    )(kernel)


def _as_triton_config(config):
    return triton.Config({"BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"]},
                         num_warps=config["num_warps"], num_stages=config["num_stages"])


def _run(launch):
    """Launch on the device: one configuration directly, several through the autotuner."""
    if len(launch.configs) == 1:
        config = launch.configs[0]
        launch.kernel[launch.grid(config)](**launch.args, **config)
    else:
        _autotuned(launch.kernel)[launch.grid](**launch.args)


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


def _target_for(q):
    """The `Target` to plan for q's device; RuntimeError when the kernel cannot run there."""
    if q.is_cuda:
        return gpu_target(q.device.index if q.device.index is not None else torch.cuda.current_device())
    if _kernel_is_interpreted():
        return INTERPRETER
    raise RuntimeError("the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 before importing triton)")


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
    target = _target_for(q)
    batch, q_heads, q_len, head_dim = q.shape
    out = torch.zeros(batch, q_heads, q_len, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.full((batch, q_heads, q_len), float("-inf"), dtype=torch.float32, device=q.device)
    if batch == 0 or q_heads == 0 or q_len == 0 or k.shape[2] == 0:
        return out, lse
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    for launch in build_launches(q, k, v, out, lse, causal=causal, anchor_len=anchor_len, prefix_len=prefix_len,
                                 scale=scale, resume=False, target=target):
        _run(launch)
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
    target = _target_for(q)
    if batch == 0 or q_heads == 0 or q_len == 0 or k.shape[2] == 0:
        return
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    for launch in build_launches(q, k, v, out, lse, causal=causal, anchor_len=anchor_len, prefix_len=prefix_len,
                                 scale=scale, resume=True, target=target):
        _run(launch)


__all__ = ["triton_attention", "triton_attend_into", "plan_launch", "build_launches",
           "tune_configs", "Target", "INTERPRETER"]
