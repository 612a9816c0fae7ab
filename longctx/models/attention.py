"""Plugs longctx into Hugging Face models through `transformers.AttentionInterface`.

The registered function receives each attention module's post-RoPE q/k/v and forwards them to
the worker context passed as the `longctx` keyword of the model call, so no modeling code is
copied and no global state is involved.
"""

from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from longctx.errors import LongCtxError

ATTN_NAME = "longctx"


def longctx_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """HF attention function: q [B, Hq, S, D], k/v [B, Hkv, S, D] -> (out [B, S, Hq, D], None).

    Delegates to `kwargs["longctx"].attend(layer, q, k, v, scale)`, the worker context built
    by the engine. The attention mask HF would build is ignored (the method owns masking).
    """
    ctx = kwargs.get("longctx")
    if ctx is None:
        raise RuntimeError("longctx attention was called without a worker context (pass longctx=ctx)")
    window = kwargs.get("sliding_window")
    if window is not None and window < ctx.total_len:
        raise LongCtxError(
            f"the model uses sliding-window attention (window {window}) shorter than the "
            f"sequence ({ctx.total_len} tokens); longctx computes full attention"
        )
    out = ctx.attend(module.layer_idx, query, key, value, scaling)
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args, **kwargs):
    """The mask builder for ATTN_NAME: no dense mask is ever materialised."""
    return None


def register_attention():
    """Register ATTN_NAME with transformers (idempotent); returns the name to set on models."""
    AttentionInterface.register(ATTN_NAME, longctx_attention)
    AttentionMaskInterface.register(ATTN_NAME, _no_mask)
    return ATTN_NAME
