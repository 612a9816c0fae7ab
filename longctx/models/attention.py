"""Plugs longctx into Hugging Face models through `transformers.AttentionInterface`.

The registered function receives each attention module's post-RoPE q/k/v and forwards them,
with the layer's attention features (`longctx.features.AttentionCall`: scale, soft-capping,
sinks, window; any other feature refuses the model), to the worker context passed as the
`longctx` keyword of the model call, so no modeling code is copied and no global state is
involved.
"""

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from longctx.errors import LongCtxError
from longctx.features import AttentionCall

ATTN_NAME = "longctx"


def longctx_attention(module, query, key, value, attention_mask, **kwargs):
    """HF attention function: q [B, Hq, S, D], k/v [B, Hkv, S, D] -> (out [B, S, Hq, D], None).

    Delegates to `kwargs["longctx"].attend(layer, q, k, v, call)`, the worker context built by
    the engine, with the `AttentionCall` the keywords describe. The attention mask HF would
    build is ignored (the method owns masking).
    """
    ctx = kwargs.get("longctx")
    if ctx is None:
        raise RuntimeError("longctx attention was called without a worker context (pass longctx=ctx)")
    out = ctx.attend(module.layer_idx, query, key, value, AttentionCall.of(module, **kwargs))
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args, **kwargs):
    """The mask builder for ATTN_NAME: no dense mask is ever materialised."""
    return None


def register_attention():
    """Register ATTN_NAME with transformers (idempotent); returns the name to set on models."""
    AttentionInterface.register(ATTN_NAME, longctx_attention)
    AttentionMaskInterface.register(ATTN_NAME, _no_mask)
    return ATTN_NAME


class FeatureProbe:
    """A stand-in worker context that reads every layer's attention call and computes nothing:
    `probe_attention` runs a model forward of two tokens with it, so a model whose attention
    asks for a feature longctx does not implement is refused when it is loaded."""

    def __init__(self):
        self.calls = {}

    def attend(self, layer, q, k, v, call):
        """Record `call` for `layer`; returns zeros shaped like `q`."""
        self.calls[layer] = call
        return torch.zeros_like(q)


def probe_attention(decoder):
    """{layer index: AttentionCall} of every layer of `decoder` (the model's decoder stack,
    loaded with ATTN_NAME), from a forward of two tokens; LongCtxError naming the first feature
    longctx does not implement, or (one line) why the forward fails without the dense mask
    longctx never builds. Who calls it: `longctx.models.loading.load_model`."""
    probe = FeatureProbe()
    device = next(decoder.parameters()).device
    try:
        with torch.inference_mode():
            decoder(input_ids=torch.zeros(1, 2, dtype=torch.long, device=device), use_cache=False, longctx=probe)
    except LongCtxError:
        raise
    except Exception as exc:  # the model's own code: whatever it raises, one line
        lines = str(exc).strip().splitlines()
        raise LongCtxError(f"the model's forward fails with longctx's attention ({type(exc).__name__}: "
                           f"{lines[0] if lines else ''}); this model cannot run with longctx") from None
    return probe.calls
