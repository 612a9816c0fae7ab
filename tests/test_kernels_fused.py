"""The fused path (`longctx.kernels.fused`): PyTorch's CPU op for real, the CUDA ops and flash-attn
through stand-ins (tests/fused_standins.py), all against the torch reference; the mask split
itself as a pure function; and which kernel each backend chooses (`longctx.kernels.dispatch`)."""

import itertools
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fused_standins import StandInAten, naive, standin_flash_attn_module
from kernel_cases import MASK_CASES, case_id
from longctx.kernels import attend_into, attention, fused, reference_attention
from longctx.kernels.dispatch import BACKENDS, CallShape, Choice, choose
from longctx.kernels.fused import OPS, flash_attn_op, fused_attention, op_for, pieces

FP32_TOL = 1e-5
HALF_TOL = 2e-2  # out of 16-bit inputs: the ops' and the reference's roundings differ


def _inputs(batch, q_heads, kv_heads, q_len, k_len, head_dim, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_heads, q_len, head_dim, generator=gen).to(dtype)
    k = torch.randn(batch, kv_heads, k_len, head_dim, generator=gen).to(dtype)
    v = torch.randn(batch, kv_heads, k_len, head_dim, generator=gen).to(dtype)
    return q, k, v


def _check(q, k, v, op, tol=FP32_TOL, **masks):
    out, lse = fused_attention(q, k, v, op=op, **masks)
    ref_out, ref_lse = reference_attention(q, k, v, **masks)
    assert out.shape == ref_out.shape and out.dtype == q.dtype and lse.dtype == torch.float32
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))
    assert torch.all(out[torch.isneginf(lse)] == 0)
    seen = ~torch.isneginf(ref_lse)
    torch.testing.assert_close(lse[seen], ref_lse[seen], atol=tol, rtol=0)
    torch.testing.assert_close(out.float(), ref_out.float(), atol=tol, rtol=tol)


def _visible(q_len, k_len, causal, anchor, prefix):
    rows, cols = torch.arange(q_len)[:, None], torch.arange(k_len)[None, :]
    visible = torch.ones(q_len, k_len, dtype=torch.bool)
    if causal:
        visible &= cols <= rows + k_len - q_len
    return visible & ~((rows < anchor) & (cols < prefix))


# --- the split, as a pure function -----------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(q_len=st.integers(0, 40), k_len=st.integers(0, 40), causal=st.booleans(), anchor=st.integers(0, 45),
       prefix=st.integers(0, 45), bottom_right=st.booleans())
def test_pieces_cover_each_visible_pair_once(q_len, k_len, causal, anchor, prefix, bottom_right):
    """Painting every piece's own mask (square causal pieces top-left or bottom-right alike,
    others as the op aligns them) gives the longctx mask, each visible pair exactly once."""
    painted = torch.zeros(q_len, k_len, dtype=torch.int32)
    for piece in pieces(q_len, k_len, causal, anchor, prefix, bottom_right):
        (r0, r1), (k0, k1) = piece.rows, piece.keys
        assert 0 <= r0 < r1 <= q_len and 0 <= k0 < k1 <= k_len
        rows, cols = torch.arange(r1 - r0)[:, None], torch.arange(k1 - k0)[None, :]
        shift = (k1 - k0) - (r1 - r0) if bottom_right else 0
        if piece.causal and not bottom_right:
            assert r1 - r0 == k1 - k0, "a top-left op got a causal piece that is not square"
        own = cols <= rows + shift if piece.causal else torch.ones(r1 - r0, k1 - k0, dtype=torch.bool)
        assert own.any(dim=1).all(), "a piece sends a row that sees none of its keys"
        painted[r0:r1, k0:k1] += own.int()
    assert torch.equal(painted, _visible(q_len, k_len, causal, anchor, prefix).int())


def test_pieces_of_the_common_calls():
    """Prefill and decode are one call; a query pass over a cache is a strip plus a square for
    a top-left op and one causal call for a bottom-right op; APB adds one row group."""
    assert [(p.rows, p.keys, p.causal) for p in pieces(64, 64, True)] == [((0, 64), (0, 64), True)]
    assert [(p.rows, p.keys, p.causal) for p in pieces(1, 100, True)] == [((0, 1), (0, 100), False)]
    assert [(p.rows, p.keys, p.causal) for p in pieces(8, 100, True)] == [((0, 8), (0, 92), False),
                                                                          ((0, 8), (92, 100), True)]
    assert [(p.rows, p.keys, p.causal) for p in pieces(8, 100, True, bottom_right=True)] == [((0, 8), (0, 100), True)]
    apb = pieces(30, 50, True, anchor_len=10, prefix_len=20, bottom_right=True)
    assert [(p.rows, p.keys, p.causal) for p in apb] == [((0, 10), (20, 30), True), ((10, 30), (0, 50), True)]


# --- PyTorch's CPU op, for real ------------------------------------------------------------------


@pytest.mark.parametrize("case", MASK_CASES, ids=case_id)
def test_cpu_op_matches_reference_fp32(case):
    batch, q_heads, kv_heads, q_len, k_len, head_dim, causal, anchor, prefix = case
    q, k, v = _inputs(batch, q_heads, kv_heads, q_len, k_len, head_dim, seed=q_len * 1000 + k_len)
    _check(q, k, v, OPS["cpu-flash"], causal=causal, anchor_len=anchor, prefix_len=prefix)


@settings(max_examples=60, deadline=None)
@given(q_len=st.integers(0, 40), k_len=st.integers(0, 40), group=st.sampled_from([1, 2, 4]),
       causal=st.booleans(), anchor=st.integers(0, 45), prefix=st.integers(0, 45), seed=st.integers(0, 99))
def test_cpu_op_fuzzed_masks_match_reference(q_len, k_len, group, causal, anchor, prefix, seed):
    q, k, v = _inputs(1, 2 * group, 2, q_len, k_len, 16, seed=seed)
    _check(q, k, v, OPS["cpu-flash"], causal=causal, anchor_len=anchor, prefix_len=prefix)


def test_cpu_op_bf16_strided_views_and_scale():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 70, 4, 32, generator=gen).transpose(1, 2)
    k = torch.randn(2, 130, 2, 32, generator=gen).transpose(1, 2)
    v = torch.randn(2, 130, 2, 32, generator=gen).transpose(1, 2)
    _check(q, k, v, OPS["cpu-flash"], causal=True, anchor_len=20, prefix_len=30)
    _check(q.bfloat16(), k.bfloat16(), v.bfloat16(), OPS["cpu-flash"], tol=HALF_TOL, causal=True, anchor_len=20,
           prefix_len=30)
    _check(q, k, v, OPS["cpu-flash"], causal=True, scale=0.3)


def test_no_hidden_score_is_computed(monkeypatch):
    """Every fused call is a plain block or a square causal one (top-left op) of visible keys:
    the pairs the op computes equal the pairs the mask shows."""
    calls = []
    real = fused.ATEN._scaled_dot_product_flash_attention_for_cpu

    class Counting:
        def _scaled_dot_product_flash_attention_for_cpu(self, q, k, v, dropout, causal, **kwargs):
            n_q, n_k = q.shape[2], k.shape[2]
            calls.append(sum(min(n_k, i + 1) for i in range(n_q)) if causal else n_q * n_k)
            return real(q, k, v, dropout, causal, **kwargs)

    monkeypatch.setattr(fused, "ATEN", Counting())
    for q_len, k_len, anchor, prefix in [(50, 80, 20, 30), (80, 50, 0, 0), (64, 64, 0, 0), (10, 100, 10, 90)]:
        calls.clear()
        q, k, v = _inputs(1, 2, 1, q_len, k_len, 16)
        fused_attention(q, k, v, op=OPS["cpu-flash"], causal=True, anchor_len=anchor, prefix_len=prefix)
        assert sum(calls) == int(_visible(q_len, k_len, True, anchor, prefix).sum())


def test_gqa_probe_sees_what_the_op_does():
    """The probe accepts an op that maps query head h to KV head h // group, and rejects one
    that indexes KV heads like query heads (reading the probe's NaN heads) or refuses them."""
    assert fused.reads_gqa(OPS["cpu-flash"], torch.device("cpu"))

    def like_query_heads(q, k, v, causal, scale):
        wide = torch.as_strided(k, (k.shape[0], q.shape[1], *k.shape[2:]), k.stride())  # head h -> buffer head h
        return naive(q, wide, wide, causal, scale, bottom_right=False)

    def refuses(q, k, v, causal, scale):
        raise RuntimeError("heads differ")

    for call in (like_query_heads, refuses):
        assert not fused.reads_gqa(fused.FusedOp(call.__name__, call, False, True), torch.device("cpu"))


# --- the CUDA ops and flash-attn, through stand-ins ---------------------------------------------


@pytest.fixture
def standin_aten(monkeypatch):
    aten = StandInAten()
    aten.calls = []
    monkeypatch.setattr(fused, "ATEN", aten)
    fused._probe_gqa.cache_clear()
    yield aten
    fused._probe_gqa.cache_clear()


def test_standins_return_the_layouts_pytorch_documents(standin_aten):
    """Each stand-in returns the tuple PyTorch's own meta kernel gives for the same call
    (same length, shapes and dtypes of every tensor)."""
    q, k, v = _inputs(2, 4, 4, 45, 70, 64, torch.bfloat16)
    calls = {
        "_scaled_dot_product_flash_attention": ((0.0, False, False), {"scale": 0.125}),
        "_scaled_dot_product_efficient_attention": ((None, True, 0.0, False), {"scale": 0.125}),
        "_scaled_dot_product_cudnn_attention": ((None, True, 0.0, False, False), {"scale": 0.125}),
    }
    for name, (args, kwargs) in calls.items():
        meta = getattr(torch.ops.aten, name)(*(t.to("meta") for t in (q, k, v)), *args, **kwargs)
        mine = getattr(standin_aten, name)(q, k, v, *args, **kwargs)
        assert len(mine) == len(meta), name
        for got, want in zip(mine, meta):
            if isinstance(want, torch.Tensor) and want.dim() > 1:
                assert (tuple(got.shape), got.dtype) == (tuple(want.shape), want.dtype), name


@pytest.mark.parametrize("op_name,dtype", [("cuda-flash", torch.bfloat16), ("cuda-efficient", torch.float32),
                                           ("cuda-cudnn", torch.bfloat16)])
@pytest.mark.parametrize("case", MASK_CASES, ids=case_id)
def test_cuda_ops_through_standins(standin_aten, op_name, dtype, case):
    """Split, alignment (only square causal calls reach the ops), GQA (expanded where the op
    takes equal heads), the efficient op's padded LSE and cuDNN's [B, H, S, 1] LSE, merged."""
    batch, q_heads, kv_heads, q_len, k_len, head_dim, causal, anchor, prefix = case
    q, k, v = _inputs(batch, q_heads, kv_heads, q_len, k_len, head_dim, dtype, seed=q_len + k_len)
    _check(q, k, v, OPS[op_name], tol=FP32_TOL if dtype == torch.float32 else HALF_TOL, causal=causal,
           anchor_len=anchor, prefix_len=prefix)


def test_flash_op_reads_gqa_heads_others_get_them_expanded(standin_aten):
    q, k, v = _inputs(1, 8, 2, 40, 60, 32, torch.bfloat16)
    for name in ("cuda-flash", "cuda-cudnn"):
        standin_aten.calls.clear()
        fused_attention(q, k, v, op=OPS[name], causal=True)
        assert standin_aten.calls, name
    assert fused.reads_gqa(OPS["cuda-flash"], q.device) and not fused.reads_gqa(OPS["cuda-cudnn"], q.device)


@pytest.fixture
def standin_flash_attn(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "flash_attn", standin_flash_attn_module(calls))
    fused._load_flash_attn.cache_clear()
    fused._probe_gqa.cache_clear()
    yield calls
    fused._load_flash_attn.cache_clear()
    fused._probe_gqa.cache_clear()


@pytest.mark.parametrize("case", MASK_CASES, ids=case_id)
def test_flash_attn_through_its_standin(standin_flash_attn, case):
    """[B, S, H, D] layout, bottom-right causal calls of any shape, GQA by index, and never a
    row without keys (flash-attn would give it lse +inf)."""
    batch, q_heads, kv_heads, q_len, k_len, head_dim, causal, anchor, prefix = case
    q, k, v = _inputs(batch, q_heads, kv_heads, q_len, k_len, head_dim, torch.bfloat16, seed=q_len)
    _check(q, k, v, fused.op_named("flash-attn"), tol=HALF_TOL, causal=causal, anchor_len=anchor, prefix_len=prefix)


def test_flash_attn_serves_a_query_pass_in_one_call(standin_flash_attn):
    q, k, v = _inputs(1, 8, 2, 32, 500, 64, torch.bfloat16)
    _check(q, k, v, fused.op_named("flash-attn"), tol=HALF_TOL, causal=True)
    assert [call for call in standin_flash_attn if call[1] == 32] == [("flash-attn", 32, 500, True)]  # + the GQA probe


def test_flash_attn_missing_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import flash_attn raises ImportError
    fused._load_flash_attn.cache_clear()
    q, k, v = _inputs(1, 2, 1, 4, 4, 16)
    try:
        with pytest.raises(RuntimeError, match="flash_attn package does not import.*pip install"):
            attention(q, k, v, causal=True, backend="flash-attn")
    finally:
        fused._load_flash_attn.cache_clear()


def test_flash_attn_op_calls_the_documented_signature():
    seen = {}

    def recorder(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                 alibi_slopes=None, deterministic=False, return_attn_probs=False):
        seen.update(shapes=(tuple(q.shape), tuple(k.shape)), scale=softmax_scale, causal=causal,
                    probs=return_attn_probs)
        return q, torch.zeros(q.shape[0], q.shape[2], q.shape[1]), None

    flash_attn_op(recorder).call(*_inputs(1, 4, 2, 5, 7, 16, torch.bfloat16), True, 0.5)
    assert seen == {"shapes": ((1, 5, 4, 16), (1, 7, 2, 16)), "scale": 0.5, "causal": True, "probs": True}


# --- which kernel each backend chooses -----------------------------------------------------------


def _call(device="cuda", dtype=torch.bfloat16, head_dim=128, head_dim_v=None, capability=(9, 0), q_len=4096,
          resume=False, causal=True):
    return CallShape(device, capability if device == "cuda" else None, dtype, 32, 8, q_len, 4096, head_dim,
                     head_dim_v or head_dim, causal, False, resume)


def test_op_for_each_device_and_dtype():
    assert op_for("cpu", torch.float32, 64, 64) == "cpu-flash"
    assert op_for("cpu", torch.float32, 64, 128) is None  # unequal V head dim: the reference
    assert op_for("cuda", torch.bfloat16, 128, 128, (9, 0)) == "cuda-flash"
    assert op_for("cuda", torch.float16, 256, 256, (8, 0), cuda_op="cudnn") == "cuda-cudnn"
    assert op_for("cuda", torch.bfloat16, 128, 128, (9, 0), cuda_op="flash-attn") == "flash-attn"
    assert op_for("cuda", torch.float32, 128, 128, (9, 0), cuda_op="flash-attn") == "cuda-efficient"
    assert op_for("cuda", torch.bfloat16, 128, 128, (7, 5)) == "cuda-efficient"  # no flash before sm_80
    assert op_for("cuda", torch.bfloat16, 512, 512, (9, 0)) == "cuda-efficient"
    assert op_for("cuda", torch.bfloat16, 100, 100, (9, 0)) is None  # not a multiple of 8


def test_auto_on_cuda_keeps_torch_until_a_measurement_says_triton():
    from longctx.kernels.calibration import shape_class

    call = _call()
    assert choose("auto", call, (), triton_available=True) == Choice("fused", "cuda-flash")
    entry = {"class": shape_class(call), "k_len": 16384, "winner": "triton"}
    assert choose("auto", call, [entry], triton_available=True) == Choice("triton")
    assert choose("auto", call, [entry], triton_available=False) == Choice("fused", "cuda-flash")
    other = _call(resume=True)  # another class: its own measurement or none
    assert choose("auto", other, [entry], triton_available=True) == Choice("fused", "cuda-flash")
    cudnn = {**entry, "winner": "cuda-cudnn"}
    assert choose("auto", call, [cudnn], triton_available=True) == Choice("fused", "cuda-cudnn")
    # What no fused op serves goes to Triton when it is installed, else the reference.
    odd = _call(head_dim=100)
    assert choose("auto", odd, (), triton_available=True) == Choice("triton")
    assert choose("auto", odd, (), triton_available=False) == Choice("reference")


def test_every_backend_on_every_device():
    for backend, device in itertools.product(BACKENDS, ("cpu", "cuda")):
        choice = choose(backend, _call(device=device, dtype=torch.float32), (), triton_available=True)
        if backend in ("triton", "reference"):
            assert choice == Choice(backend)
        else:
            assert choice == Choice("fused", "cpu-flash" if device == "cpu" else "cuda-efficient"), (backend, device)
    assert choose("flash-attn", _call(), ()) == Choice("fused", "flash-attn")
    assert choose("torch", _call(), ()) == Choice("fused", "cuda-flash")
    with pytest.raises(ValueError, match="unknown attention backend"):
        choose("fast", _call(), ())


def test_cpu_dispatch_end_to_end():
    """`torch` (and `auto` on CPU) take the fused path when it serves; unequal V head dims fall
    back to the reference; `reference` forces the oracle; attend_into merges the same result."""
    q, k, v = _inputs(1, 4, 2, 9, 9, 16)
    out, _ = attention(q, k, v, causal=True, backend="torch")
    torch.testing.assert_close(out, fused_attention(q, k, v, causal=True, op=OPS["cpu-flash"])[0], atol=0, rtol=0)
    wide_v = torch.randn(1, 2, 9, 32)
    out, _ = attention(q, k, wide_v, causal=True, backend="auto")
    torch.testing.assert_close(out, reference_attention(q, k, wide_v, causal=True)[0], atol=0, rtol=0)
    out, _ = attention(q, k, v, causal=True, backend="reference")
    torch.testing.assert_close(out, reference_attention(q, k, v, causal=True)[0], atol=0, rtol=0)
    state_out, state_lse = torch.zeros(1, 4, 9, 16), torch.full((1, 4, 9), float("-inf"))
    attend_into(state_out, state_lse, q, k, v, causal=True)
    want_out, want_lse = reference_attention(q, k, v, causal=True)
    torch.testing.assert_close(state_out, want_out, atol=FP32_TOL, rtol=FP32_TOL)
    torch.testing.assert_close(state_lse, want_lse, atol=FP32_TOL, rtol=0)
