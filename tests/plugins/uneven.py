"""Exact methods whose contiguous blocks have random (seeded) uneven sizes: the engine must run any valid plan."""

import random

from burst.allgather import AllGatherAttention
from burst.ring import RingAttention
from burst.ulysses import UlyssesAttention


def random_sizes(doc_len, world):
    """`world` positive sizes summing to `doc_len`, seeded by (doc_len, world), deliberately uneven."""
    rng = random.Random(doc_len * 31 + world)
    cuts = sorted(rng.sample(range(1, doc_len), world - 1)) if world > 1 else []
    bounds = [0, *cuts, doc_len]
    return [after - before for before, after in zip(bounds, bounds[1:])]


class UnevenBlocks:
    """Mix-in: contiguous blocks of random sizes instead of `Method.block_sizes`."""

    def block_sizes(self, doc_len, query_len, world):
        """Random uneven sizes (every block non-empty)."""
        return random_sizes(doc_len, world)


class UnevenRing(UnevenBlocks, RingAttention):
    """Ring over random uneven contiguous blocks."""


class UnevenUlysses(UnevenBlocks, UlyssesAttention):
    """Ulysses over random uneven shards."""


class UnevenAllGather(UnevenBlocks, AllGatherAttention):
    """All-gather over random uneven contiguous blocks (always the contiguous layout)."""

    def plan(self, doc_len, query_len, world):
        """Contiguous layout with random block sizes."""
        return self.layout_plan(doc_len, query_len, world, "contiguous")
