"""The Triton attention kernel, run on the CPU by the Triton interpreter, against the torch reference.

TRITON_INTERPRET must be set before triton is first imported (triton.jit decides at
decoration time whether a kernel is compiled or interpreted), so it is set at the very top.
Shapes are kept small: the interpreter runs every program of the grid in Python.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import itertools  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from longctx.kernels import attend_into, attention, merge, reference_attention  # noqa: E402
from longctx.kernels import triton_kernels, triton_launch  # noqa: E402
from kernel_cases import MASK_CASES, case_id  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TOLERANCES = {  # dtype: (out atol/rtol, lse atol)
    torch.float32: (1e-4, 1e-4),
    torch.bfloat16: (2e-2, 1e-3),
    torch.float16: (5e-3, 1e-3),
}

pytestmark = pytest.mark.skipif(
    not triton_kernels._kernel_is_interpreted(),
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
    config = {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": 4, "num_stages": 1}
    monkeypatch.setattr(triton_launch, "tune_configs", lambda *args: [config])
    monkeypatch.setattr(triton_launch, "split_config", lambda *args: config)
    q, k, v = _inputs(1, 2, 1, 100, 147, 16, torch.float32, seed=block_m)
    _check(q, k, v, causal=True, anchor_len=40, prefix_len=50)
    q, k, v = _inputs(1, 2, 1, 147, 100, 16, torch.float32, seed=block_n)
    _check(q, k, v, causal=True)


def test_launch_config_is_sane():
    for target in (triton_launch.INTERPRETER, triton_launch.Target(80, 108), triton_launch.Target(90, 132)):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for head_dim in (16, 64, 128, 256):
                configs = [*triton_launch.tune_configs(target, dtype, head_dim, head_dim),
                           triton_launch.split_config(target, dtype, head_dim, head_dim)]
                for config in configs:
                    for key in ("BLOCK_M", "BLOCK_N"):
                        assert config[key] >= 16 and config[key] & (config[key] - 1) == 0
                    if target.arch >= 90 and dtype != torch.float32:
                        assert config["BLOCK_M"] >= 64  # a Hopper warpgroup MMA tile
    # A few autotuned candidates for 16-bit Hopper prefill, one config in the interpreter.
    assert 2 <= len(triton_launch.tune_configs(triton_launch.Target(90, 132), torch.bfloat16, 128, 128)) <= 3
    assert len(triton_launch.tune_configs(triton_launch.INTERPRETER, torch.bfloat16, 128, 128)) == 1


# --- scheduling: heaviest causal tiles first ------------------------------------------------


@triton.jit
def _record_program_work(Out, batch_packs, num_splits, q_len, CAUSAL: tl.constexpr, ROWS: tl.constexpr):
    pid = tl.program_id(0)
    pack_id, split, tile = triton_kernels._program_work(pid, batch_packs, num_splits, q_len, CAUSAL, ROWS)
    tl.store(Out + 3 * pid, pack_id)
    tl.store(Out + 3 * pid + 1, split)
    tl.store(Out + 3 * pid + 2, tile)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_heavy_tiles_get_the_lowest_program_ids(causal):
    """Every (pack, split, tile) runs once; causal tiles go last-tile first (most keys), and
    all packs and splits of a tile come before any lighter tile."""
    batch_packs, num_splits, q_len, rows = 3, 2, 50, 8
    tiles = triton.cdiv(q_len, rows)
    work = torch.full((batch_packs * num_splits * tiles, 3), -1, dtype=torch.int32)
    _record_program_work[(work.shape[0],)](work, batch_packs, num_splits, q_len, CAUSAL=causal, ROWS=rows)
    assert sorted(map(tuple, work.tolist())) == sorted(itertools.product(range(batch_packs), range(num_splits), range(tiles)))
    tile_order = work[:, 2].tolist()
    expected = sorted(tile_order, reverse=causal)
    assert tile_order == expected


# --- GQA packing -----------------------------------------------------------------------------


@pytest.mark.parametrize("group", [1, 2, 3, 4, 6, 8])
def test_gqa_groups_pack_into_one_tile(group):
    """The query heads of a group share one tile (and its K/V loads); groups that do not
    divide BLOCK_M leave unused rows, which must not leak."""
    plan = triton_launch.plan_launch(1, 2 * group, 2, 45, 70, 16, 16, torch.float32, triton_launch.INTERPRETER)
    assert plan.pack == group
    q, k, v = _inputs(1, 2 * group, 2, 45, 70, 16, torch.float32, seed=group)
    _check(q, k, v, causal=True, anchor_len=12, prefix_len=20)
    _check(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=False)


# --- tensor descriptors (TMA) for the K/V loads ------------------------------------------------


@pytest.fixture
def tma(monkeypatch):
    monkeypatch.setenv(triton_launch.TMA_ENV, "1")


def _kv_tma(q, k, v, resume=False):
    """Whether the main launch of this call loads K/V through tensor descriptors."""
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=torch.float32)
    lse = torch.zeros(q.shape[:3])
    launch = triton_launch.build_launches(q, k, v, out, lse, causal=True, anchor_len=0, prefix_len=0, scale=1.0,
                                          resume=resume, target=triton_launch.target_for(q))[0]
    return launch.args["KV_TMA"]


@pytest.mark.parametrize("shape", MASK_CASES, ids=case_id)
def test_tma_loads_match_reference(tma, shape):
    """With LONGCTX_TRITON_TMA=1 the descriptor path (rows past the keys zero-filled by the
    descriptor, not masked loads) computes every mask case as the reference does."""
    batch, q_heads, kv_heads, q_len, k_len, head_dim, causal, anchor, prefix = shape
    q, k, v = _inputs(batch, q_heads, kv_heads, q_len, k_len, head_dim, torch.bfloat16, seed=q_len + 3 * k_len)
    assert _kv_tma(q, k, v)
    _check(q, k, v, causal=causal, anchor_len=anchor, prefix_len=prefix)


def test_tma_resumes_and_splits(tma):
    q, k, v = _inputs(1, 4, 2, 1, 260, 16, torch.float16, seed=8)
    out, lse = _fold(q, k, v, [(0, 100, False), (100, 260, True)], "triton")
    want_out, want_lse = reference_attention(q, k, v, causal=True)
    torch.testing.assert_close(lse, want_lse, atol=1e-3, rtol=0)
    torch.testing.assert_close(out, want_out.float(), atol=5e-3, rtol=5e-3)
    q, k, v = _inputs(1, 4, 2, 70, 130, 32, torch.bfloat16, seed=9)
    assert _kv_tma(q, k, v, resume=True)
    out, lse = _fold(q, k, v, [(0, 60, False), (60, 130, True)], "triton")
    want_out, want_lse = reference_attention(q, k, v, causal=True)
    torch.testing.assert_close(lse, want_lse, atol=1e-3, rtol=0)
    torch.testing.assert_close(out, want_out.float(), atol=2e-2, rtol=2e-2)


def test_tma_only_where_the_layout_allows(monkeypatch, tma):
    """float32 keeps pointer loads; so do K/V a descriptor cannot read (head-dim stride 2),
    and the result is right either way; without the request nothing changes."""
    q, k, v = _inputs(1, 4, 2, 40, 50, 32, torch.bfloat16, seed=1)
    assert not _kv_tma(q.float(), k.float(), v.float())
    strided_v = torch.randn(1, 2, 50, 64).bfloat16()[..., ::2]
    assert not _kv_tma(q, k, strided_v)
    _check(q, k, strided_v, causal=True)
    assert _kv_tma(q, k, v)
    monkeypatch.setenv(triton_launch.TMA_ENV, "0")
    assert not _kv_tma(q, k, v)


# --- split-K (flash-decoding) ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("q_len,causal,anchor,prefix", [(1, True, 0, 0), (1, False, 0, 0), (6, True, 0, 0),
                                                         (6, True, 3, 40), (6, False, 6, 300)])
def test_split_k_decode_and_query_pass(dtype, q_len, causal, anchor, prefix):
    """Few queries over many keys: the wrapper splits the keys and combines exactly."""
    q, k, v = _inputs(1, 8, 2, q_len, 300, 32, dtype, seed=q_len + anchor)
    plan = triton_launch.plan_launch(1, 8, 2, q_len, 300, 32, 32, dtype, triton_launch.INTERPRETER)
    assert plan.splits > 1
    _check(q, k, v, causal=causal, anchor_len=anchor, prefix_len=prefix)


@pytest.mark.parametrize("shape", MASK_CASES, ids=case_id)
def test_forced_splits_match_reference(monkeypatch, shape):
    """Every mask case with the keys cut into 3 shares (some empty for short rows)."""
    monkeypatch.setattr(triton_launch, "choose_splits", lambda programs, key_blocks, target: min(3, key_blocks))
    batch, q_heads, kv_heads, q_len, k_len, head_dim, causal, anchor, prefix = shape
    q, k, v = _inputs(batch, q_heads, kv_heads, q_len, k_len, head_dim, torch.float32, seed=q_len + 7 * k_len)
    _check(q, k, v, causal=causal, anchor_len=anchor, prefix_len=prefix)


# --- LAO: folding into a running state --------------------------------------------------------


def _fold(q, k, v, pieces, backend, state=None):
    """Fold key ranges `pieces` ((lo, hi, causal), ...) into a state with attend_into."""
    batch, heads, q_len, _ = q.shape
    if state is None:
        state = (torch.zeros(batch, heads, q_len, v.shape[-1]), torch.full((batch, heads, q_len), float("-inf")))
    out, lse = state
    for lo, hi, causal in pieces:
        attend_into(out, lse, q, k[:, :, lo:hi], v[:, :, lo:hi], causal=causal, backend=backend)
    return out, lse


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("q_len", [1, 37], ids=["decode", "block"])
def test_attend_into_equals_one_call(monkeypatch, dtype, q_len):
    """Folding a ring's key blocks one by one (the last one causal) gives the attention over
    all of them, with no merge pass on the Triton path."""
    import longctx.kernels as kernels

    q, k, v = _inputs(1, 4, 2, q_len, 90 + q_len, 16, dtype, seed=q_len)
    pieces = [(0, 30, False), (30, 31, False), (31, 90, False), (90, 90 + q_len, True)]
    want_out, want_lse = reference_attention(q, k, v, causal=True)

    def no_merge(*args, **kwargs):
        raise AssertionError("the Triton path must not merge")

    monkeypatch.setattr(kernels, "merge", no_merge)
    out, lse = _fold(q, k, v, pieces, "triton")
    out_tol, lse_tol = TOLERANCES[dtype]
    torch.testing.assert_close(lse, want_lse, atol=lse_tol, rtol=0)
    torch.testing.assert_close(out, want_out.float(), atol=out_tol, rtol=out_tol)
    monkeypatch.undo()
    ref_out, ref_lse = _fold(q, k, v, pieces, "reference")  # compute-and-merge path
    torch.testing.assert_close(lse, ref_lse, atol=lse_tol, rtol=0)
    torch.testing.assert_close(out, ref_out, atol=out_tol, rtol=out_tol)


def test_attend_into_row_slices_of_a_larger_state():
    """Like a ring item: strided row slices of the state; rows outside stay bit-identical,
    rows that see no key keep out 0 and lse -inf, GQA and the APB rule apply."""
    q, k, v = _inputs(1, 4, 1, 60, 80, 16, torch.float32, seed=4)
    out = torch.zeros(1, 4, 60, 16)
    lse = torch.full((1, 4, 60), float("-inf"))
    attend_into(out, lse, q, k[:, :, :40], v[:, :, :40], causal=False, backend="triton")
    before_out, before_lse = out.clone(), lse.clone()
    rows = slice(10, 50)
    attend_into(out[:, :, rows], lse[:, :, rows], q[:, :, rows], k[:, :, 40:], v[:, :, 40:], causal=True,
                anchor_len=5, prefix_len=10, backend="triton")
    want_out, want_lse = before_out.clone(), before_lse.clone()
    part_out, part_lse = reference_attention(q[:, :, rows], k[:, :, 40:], v[:, :, 40:], causal=True,
                                             anchor_len=5, prefix_len=10)
    want_out[:, :, rows], want_lse[:, :, rows] = merge(before_out[:, :, rows], before_lse[:, :, rows], part_out, part_lse)
    assert torch.equal(out[:, :, :10], before_out[:, :, :10]) and torch.equal(lse[:, :, 50:], before_lse[:, :, 50:])
    torch.testing.assert_close(lse, want_lse, atol=1e-4, rtol=0)
    torch.testing.assert_close(out, want_out, atol=1e-4, rtol=1e-4)
    # A fresh state and keys no row can see: nothing changes.
    empty_out, empty_lse = torch.zeros(1, 4, 3, 16), torch.full((1, 4, 3), float("-inf"))
    attend_into(empty_out, empty_lse, q[:, :, :3], k[:, :, :2], v[:, :, :2], causal=True, anchor_len=3,
                prefix_len=2, backend="triton")
    assert torch.all(empty_out == 0) and torch.all(torch.isneginf(empty_lse))


def test_attend_into_split_path_resumes():
    """Decoding with split-K folds the running state in the combine kernel."""
    q, k, v = _inputs(1, 4, 2, 1, 260, 16, torch.float32, seed=8)
    out, lse = _fold(q, k, v, [(0, 100, False)], "triton")
    assert triton_launch.plan_launch(1, 4, 2, 1, 160, 16, 16, torch.float32, triton_launch.INTERPRETER).splits > 1
    out, lse = _fold(q, k, v, [(100, 260, True)], "triton", state=(out, lse))
    want_out, want_lse = reference_attention(q, k, v, causal=True)
    torch.testing.assert_close(lse, want_lse, atol=1e-4, rtol=0)
    torch.testing.assert_close(out, want_out, atol=1e-4, rtol=1e-4)


def test_attend_into_rejects_a_bad_state():
    q, k, v = _inputs(1, 2, 1, 4, 4, 16, torch.float32, seed=0)
    with pytest.raises(ValueError, match="float32"):
        attend_into(torch.zeros(1, 2, 4, 16).half(), torch.zeros(1, 2, 4), q, k, v, causal=True, backend="triton")
    with pytest.raises(ValueError, match="shapes"):
        attend_into(torch.zeros(1, 2, 5, 16), torch.zeros(1, 2, 5), q, k, v, causal=True, backend="triton")


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
                        or m.startswith("longctx.kernels.triton"))
        assert not loaded, loaded
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("striped", [False, True], ids=["zigzag", "striped"])
def test_ring_accumulator_with_the_triton_kernel(striped):
    """BurstAttention's local step: every host's block items folded into one Accumulator
    with the Triton kernel equal causal attention over the whole sequence."""
    from burst.accumulator import Accumulator
    from burst.blocks import block_items
    from longctx.features import Kernels

    world, length = 2, 48
    if striped:
        spans = [[range(rank, length, world)] for rank in range(world)]
    else:
        chunk = length // (2 * world)
        spans = [[range(r * chunk, (r + 1) * chunk), range((2 * world - 1 - r) * chunk, (2 * world - r) * chunk)]
                 for r in range(world)]
    q_all, k_all, v_all = _inputs(1, 4, 2, length, length, 16, torch.float32, seed=21)
    want, _ = reference_attention(q_all, k_all, v_all, causal=True)
    for rank in range(world):
        mine = [p for span in spans[rank] for p in span]
        acc = Accumulator(q_all[:, :, mine])
        q = q_all[:, :, mine]
        for source in range(world):
            theirs = [p for span in spans[source] for p in span]
            k, v = k_all[:, :, theirs], v_all[:, :, theirs]
            for item in block_items(spans[rank], spans[source]):
                acc.attend(item.q_rows, q[:, :, item.q_rows], k[:, :, item.k_rows], v[:, :, item.k_rows],
                           causal=item.causal, scale=None, kernels=Kernels("triton"))
        torch.testing.assert_close(acc.result(torch.float32)[0], want[:, :, mine], atol=1e-4, rtol=1e-4)


def test_autotuner_prunes_to_the_planned_candidates(monkeypatch):
    """The GPU autotuner (not run here: it needs a device to time on) offers exactly the
    candidates `tune_configs` gives the call's target, keyed on what changes the best one."""
    monkeypatch.setattr(triton_launch, "target_for", lambda q: triton_launch.Target(90, 132))
    tuned = triton_launch._autotuned(triton_kernels._attention_fwd_kernel)
    assert {"BLOCK_D", "BLOCK_DV", "CAUSAL", "PACK", "RESUME", "KV_TMA", "tune_bucket"} <= set(tuned.keys)
    assert set(tuned.restore_value) == {"Out", "Lse"}
    q = torch.zeros(1, 8, 4, 128, dtype=torch.bfloat16)
    tuned.nargs = {}
    pruned = tuned.prune_configs({"Q": q, "BLOCK_D": 128, "BLOCK_DV": 128})
    want = triton_launch.tune_configs(triton_launch.Target(90, 132), torch.bfloat16, 128, 128)
    assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in pruned] == \
        [(c["BLOCK_M"], c["BLOCK_N"], c["num_warps"], c["num_stages"]) for c in want]
