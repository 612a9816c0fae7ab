"""Running (out, lse) over the rows of a local query block, updated in place as key blocks arrive."""

import torch


class Accumulator:
    """fp32 running attention for queries [B, Hq, S, D]: `attend` folds a key block into some rows.

    This is BurstAttention's LAO: the Triton kernel continues the running softmax of the
    rows it is given (row-slice views of the state) instead of returning a partial result
    for a separate merge pass; the CPU backends compute and merge (`attend_into`).
    """

    def __init__(self, q, head_dim_v=None):
        batch, heads, length, head_dim = q.shape
        self.out = torch.zeros(batch, heads, length, head_dim_v or head_dim, dtype=torch.float32, device=q.device)
        self.lse = torch.full((batch, heads, length), float("-inf"), dtype=torch.float32, device=q.device)

    def attend(self, rows, q, k, v, *, causal, scale, kernels):
        """Fold attention of query rows `rows` (a slice; `q` holds those rows) over k/v into the
        state, with `kernels` (`longctx.features.Kernels`: `attend_into`)."""
        kernels.attend_into(self.out[:, :, rows], self.lse[:, :, rows], q, k, v, causal=causal, scale=scale)

    def result(self, dtype):
        """(attention output in `dtype`, lse float32)."""
        return self.out.to(dtype), self.lse
