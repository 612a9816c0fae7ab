"""Stand-ins for the CUDA attention ops and for flash-attn, so the CPU tests can prove how
`longctx.kernels.fused` splits masks for them, aligns causal calls, expands GQA and merges
their LSE without a GPU.

They are stand-ins, not the ops: each takes its op's documented arguments (the aten schemas
`torch.ops.aten.X.default._schema` of the installed torch; flash-attn's `flash_attn_func`)
and returns its documented layout (PyTorch's meta kernels give the aten ones; the tests
check that), and computes the attention itself in float64 with an explicit mask. They refuse
what the real ops refuse where it matters to the split: 16-bit only for flash, cuDNN and
flash-attn; equal head counts for efficient and cuDNN (K/V must arrive expanded). A PyTorch
op's causal mask is top-left aligned as PyTorch documents, and a stand-in refuses a causal
call that is not square (the only causal calls that are right under either alignment); the
flash-attn stand-in aligns bottom-right as flash-attn documents and, like flash-attn, gives
a row that sees no key lse +inf.
"""

import math
import types

import torch

HALF = (torch.bfloat16, torch.float16)


def naive(q, k, v, causal, scale, bottom_right):
    """(out [B, Hq, Sq, D] in q.dtype, lse [B, Hq, Sq] float32) in float64 with an explicit mask;
    GQA by index; causal top-left (j <= i) or bottom-right (j <= i + Sk - Sq). Empty rows: out 0, lse -inf."""
    q_len, k_len = q.shape[2], k.shape[2]
    group = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(group, dim=1)
    vv = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q.double(), kk) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if causal:
        rows, cols = torch.arange(q_len)[:, None], torch.arange(k_len)[None, :]
        scores = scores.masked_fill(cols > rows + (k_len - q_len if bottom_right else 0), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.softmax(scores, dim=-1).nan_to_num(0.0) @ vv
    return out.to(q.dtype), lse.float()


def _square_only(query, key, is_causal, name):
    if is_causal and query.shape[2] != key.shape[2]:
        raise AssertionError(f"{name} stand-in: a causal call of {query.shape[2]} x {key.shape[2]} is not square; "
                             f"its top-left mask would differ from longctx's")


def _equal_heads(query, key, name):
    if query.shape[1] != key.shape[1]:
        raise RuntimeError(f"{name} stand-in: {query.shape[1]} query heads, {key.shape[1]} key heads")


def _half(query, name):
    if query.dtype not in HALF:
        raise RuntimeError(f"{name} stand-in: {query.dtype} is not a 16-bit dtype")


def _seed():
    return torch.zeros((), dtype=torch.int64), torch.zeros((), dtype=torch.int64)


class StandInAten:
    """Stand-ins for `torch.ops.aten`'s three CUDA attention ops with LSE (CPU tensors)."""

    calls = None  # a list to record (op name, Sq, Sk, causal) in, when set

    def _record(self, name, query, key, is_causal):
        if self.calls is not None:
            self.calls.append((name, query.shape[2], key.shape[2], is_causal))

    def _scaled_dot_product_flash_attention(self, query, key, value, dropout_p=0.0, is_causal=False,
                                            return_debug_mask=False, *, scale=None):
        """Stand-in for aten::_scaled_dot_product_flash_attention: (output, logsumexp [B, H, Sq],
        cum_seq_q, cum_seq_k, max_q, max_k, rng_state, unused, debug_attn_mask); GQA by index."""
        assert dropout_p == 0.0 and not return_debug_mask
        _half(query, "flash")
        _square_only(query, key, is_causal, "flash")
        self._record("flash", query, key, is_causal)
        out, lse = naive(query, key, value, is_causal, scale, bottom_right=False)
        return (out, lse, None, None, query.shape[2], key.shape[2], torch.zeros(2, dtype=torch.int64),
                torch.zeros((), dtype=torch.int64), torch.empty(0, dtype=query.dtype))

    def _scaled_dot_product_efficient_attention(self, query, key, value, attn_bias, compute_log_sumexp,
                                                dropout_p=0.0, is_causal=False, *, scale=None):
        """Stand-in for aten::_scaled_dot_product_efficient_attention: (output laid out
        [B, Sq, H, D] transposed to [B, H, Sq, D], log_sumexp [B, H, ceil(Sq / 32) * 32] whose
        padding rows hold garbage, philox_seed, philox_offset); equal head counts."""
        assert attn_bias is None and compute_log_sumexp and dropout_p == 0.0
        _equal_heads(query, key, "efficient")
        _square_only(query, key, is_causal, "efficient")
        self._record("efficient", query, key, is_causal)
        out, lse = naive(query, key, value, is_causal, scale, bottom_right=False)
        padded = torch.full((*lse.shape[:2], math.ceil(lse.shape[2] / 32) * 32), float("nan"))
        padded[..., :lse.shape[2]] = lse
        return (out.transpose(1, 2).contiguous().transpose(1, 2), padded, *_seed())

    def _scaled_dot_product_cudnn_attention(self, query, key, value, attn_bias, compute_log_sumexp, dropout_p=0.0,
                                            is_causal=False, return_debug_mask=False, *, scale=None):
        """Stand-in for aten::_scaled_dot_product_cudnn_attention: (output, logsumexp [B, H, Sq, 1],
        cum_seq_q, cum_seq_k, max_q, max_k, philox_seed, philox_offset, debug_attn_mask); equal heads."""
        assert attn_bias is None and compute_log_sumexp and dropout_p == 0.0 and not return_debug_mask
        _half(query, "cudnn")
        _equal_heads(query, key, "cudnn")
        _square_only(query, key, is_causal, "cudnn")
        self._record("cudnn", query, key, is_causal)
        out, lse = naive(query, key, value, is_causal, scale, bottom_right=False)
        return (out, lse[..., None], None, None, query.shape[2], key.shape[2], *_seed(), None)


def standin_flash_attn_module(calls=None):
    """A module object standing in for the `flash_attn` package: `flash_attn_func` with
    flash-attn 2's documented signature and return, computing in float64."""

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                        softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
        """Stand-in for flash_attn.flash_attn_func: q [B, Sq, H, D], k/v [B, Sk, Hk, D] (Hk
        divides H), bottom-right causal; returns out [B, Sq, H, D] and, with return_attn_probs,
        (out, softmax_lse [B, H, Sq] float32, S_dmask None at dropout 0). Empty rows: lse +inf."""
        assert dropout_p == 0.0 and window_size == (-1, -1) and softcap == 0.0 and alibi_slopes is None
        if q.dtype not in HALF:
            raise RuntimeError("FlashAttention only support fp16 and bf16 data type (stand-in)")
        if q.shape[2] % k.shape[2]:
            raise RuntimeError("Number of heads in key/value must divide number of heads in query (stand-in)")
        if calls is not None:
            calls.append(("flash-attn", q.shape[1], k.shape[1], causal))
        out, lse = naive(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal, softmax_scale,
                         bottom_right=True)
        lse = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)
        out = out.transpose(1, 2)
        return (out, lse, None) if return_attn_probs else out

    module = types.ModuleType("flash_attn")
    module.__doc__ = "stand-in for the flash_attn package (tests only)"
    module.flash_attn_func = flash_attn_func
    return module
