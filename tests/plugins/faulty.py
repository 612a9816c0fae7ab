"""A burst method whose rank 1 fails (raises or hangs) in the first prefill layer."""

import time

from burst.ring import BurstAttention


class RaisingBurst(BurstAttention):
    """Rank 1 raises during prefill while the others wait on it in the ring."""

    def prefill_attention(self, ctx, layer, q, k, v, scale):
        if ctx.rank == 1:
            raise RuntimeError("injected failure on rank 1")
        return super().prefill_attention(ctx, layer, q, k, v, scale)


class HangingBurst(BurstAttention):
    """Rank 1 stalls during prefill; the others must give up after the collective timeout."""

    def prefill_attention(self, ctx, layer, q, k, v, scale):
        if ctx.rank == 1:
            time.sleep(3600)
        return super().prefill_attention(ctx, layer, q, k, v, scale)
