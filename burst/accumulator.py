"""Running (out, lse) over the rows of a local query block, merged exactly as key blocks arrive."""

import torch

from longctx.kernels import merge


class Accumulator:
    """fp32 running attention for queries [B, Hq, S, D]: `add` merges a partial result for some rows."""

    def __init__(self, q):
        batch, heads, length, _ = q.shape
        self.out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        self.lse = torch.full((batch, heads, length), float("-inf"), dtype=torch.float32, device=q.device)

    def add(self, rows, out, lse):
        """Merge partial attention (out, lse) of query rows `rows` (a slice) over new keys."""
        merged_out, merged_lse = merge(self.out[:, :, rows], self.lse[:, :, rows], out, lse)
        self.out[:, :, rows] = merged_out
        self.lse[:, :, rows] = merged_lse

    def result(self, dtype):
        """The attention output in `dtype`."""
        return self.out.to(dtype)
