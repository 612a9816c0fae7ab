"""Dense: one worker, ordinary causal attention. The reference every exact method must match."""

from longctx.errors import LongCtxError
from longctx.layouts import CONTIGUOUS
from longctx.method import Method
from longctx.planner import Planner


class DensePlanner(Planner):
    """All tokens on host 0, whatever `--layout` says (dense is the reference beside any layout)."""

    layout = CONTIGUOUS

    def check(self, model_config, world):
        """Dense runs on exactly one worker."""
        if world != 1:
            raise LongCtxError(f"method 'dense' runs on one worker (got --nproc {world})")


class DenseAttention(Method):
    """Single-worker causal attention over the whole document."""

    name = "dense"
    Planner = DensePlanner

    def prefill_attention(self, ctx, layer, q, k, v, scale):
        """Keep all K/V; causal attention over the local block: (out, lse)."""
        ctx.cache.store(layer, k, v)
        return ctx.kernels.attention(q, k, v, causal=True, scale=scale)
