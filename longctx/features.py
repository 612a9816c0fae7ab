"""What a model's attention layer asks for beyond q, k and v, and the kernels bound to it.

transformers calls a registered attention function as `fn(module, q, k, v, mask, scaling=...,
dropout=..., **kwargs)`, where `kwargs` hold the layer's attention features (`sliding_window`,
`softcap`, `s_aux`, ...) and whatever the model call passed down (`position_ids`,
`output_hidden_states`, longctx's worker context). `AttentionCall.of` reads every keyword:
each one is implemented exactly or refused, in one line naming the feature, so a model whose
attention longctx cannot compute never gives a silently wrong answer.

* `scaling`: the softmax scale, passed to every kernel call.
* `softcap` (Gemma 2's `attn_logit_softcapping`): logits become `cap * tanh(logits / cap)`
  before the softmax, applied inside the kernel (`Kernels`; the kernel paths that cannot apply
  it are refused).
* `s_aux` (gpt-oss's attention sinks): one extra logit per query head that joins every
  query's softmax with no value: one more term of the exact log-sum-exp merge, applied to the
  method's merged (out, lse) (`with_sinks`).
* `sliding_window`: exact when the window covers the whole request (every key of a causal
  query is inside it); a shorter window is refused (`AttentionCall.check`).
* `dropout` must be 0 (inference), `is_causal` must not be False; the call's own outputs
  (`output_attentions`, ...) and `position_ids` (already applied by RoPE before the call)
  do not change the attention.
"""

from dataclasses import dataclass

import torch

from longctx import kernels
from longctx.errors import LongCtxError

# keywords that do not change what the attention computes
PASSED_THROUGH = frozenset({"position_ids", "use_cache", "output_attentions", "output_hidden_states",
                            "output_router_logits", "return_dict", "cache_position", "longctx"})


@dataclass(frozen=True)
class AttentionCall:
    """One layer's attention call: `scale`, `softcap` (None: none), `sinks` [Hq] (None: none)
    and `window` (None: full attention)."""

    scale: float = None
    softcap: float = None
    sinks: torch.Tensor = None
    window: int = None

    @classmethod
    def of(cls, module, scaling=None, dropout=0.0, sliding_window=None, softcap=None, s_aux=None, is_causal=None,
           **kwargs):
        """The call a layer's keywords describe; LongCtxError (one line, naming the feature) for
        a keyword longctx does not implement."""
        unknown = sorted(key for key, value in kwargs.items() if key not in PASSED_THROUGH and value is not None)
        if unknown:
            raise LongCtxError(f"the model's attention ({type(module).__name__}) asks for {unknown[0]!r}, an attention "
                               "feature longctx does not implement; this model cannot run with longctx")
        if dropout:
            raise LongCtxError(f"the model's attention uses dropout ({dropout}): longctx runs inference only "
                               "(call model.eval())")
        if is_causal is False or getattr(module, "is_causal", True) is False:
            raise LongCtxError(f"the model's attention ({type(module).__name__}) is bidirectional; longctx "
                               "computes causal attention")
        return cls(scaling, softcap, s_aux, sliding_window)

    def check(self, total_len):
        """LongCtxError when this call cannot be exact for a request of `total_len` tokens (a
        sliding window shorter than it); returns self."""
        if self.window is not None and self.window < total_len:
            raise LongCtxError(f"the model uses sliding-window attention (window {self.window}) shorter than the "
                               f"sequence ({total_len} tokens); longctx computes full attention")
        return self


@dataclass(frozen=True)
class Kernels:
    """The attention kernels of one request, bound to its kernel `backend`
    (`longctx.kernels.BACKENDS`) and the model's logit `softcap` (None: none): what a method
    calls for every piece of attention (`ctx.kernels.attention(...)`), so no method can drop
    a feature of the model's attention. Signatures as `longctx.kernels.attention` /
    `attend_into`, without `backend` and `softcap`."""

    backend: str = "auto"
    softcap: float = None

    def check(self):
        """LongCtxError when the backend cannot apply the soft-capping; returns self."""
        if self.softcap is not None and not kernels.applies_softcap(self.backend):
            raise LongCtxError(f"the model caps attention logits (soft-capping {self.softcap:g}), which the "
                               f"{self.backend} kernel backend cannot apply; use --kernel-backend auto or reference")
        return self

    def attention(self, q, k, v, *, causal, anchor_len=0, prefix_len=0, scale=None):
        """`longctx.kernels.attention` with this request's backend and soft-capping."""
        return kernels.attention(q, k, v, causal=causal, anchor_len=anchor_len, prefix_len=prefix_len, scale=scale,
                                 softcap=self.softcap, backend=self.backend)

    def attend_into(self, out, lse, q, k, v, *, causal, anchor_len=0, prefix_len=0, scale=None):
        """`longctx.kernels.attend_into` with this request's backend and soft-capping."""
        kernels.attend_into(out, lse, q, k, v, causal=causal, anchor_len=anchor_len, prefix_len=prefix_len,
                            scale=scale, softcap=self.softcap, backend=self.backend)


def with_sinks(out, lse, sinks):
    """Attention `out` [B, Hq, S, D] over every key (log-sum-exp `lse` [B, Hq, S] float32) with
    one sink logit per query head (`sinks` [Hq]) joined to the softmax: the sink takes
    exp(sink) / (exp(lse) + exp(sink)) of the weight and contributes no value, so out is scaled
    by sigmoid(lse - sink) (the merge of (out, lse) with (0, sink)). Returns out in its dtype."""
    weight = torch.sigmoid(lse - sinks.detach().float().to(lse.device)[None, :, None])
    return (out.float() * weight[..., None]).to(out.dtype)
