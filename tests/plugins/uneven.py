"""Exact methods whose contiguous blocks have random (seeded) uneven sizes: the engine must run any valid plan.

They are plug-ins (`--method plugins.uneven:UnevenRing` with tests/ on the path) and declare an
option of their own, `--uneven-seed`, which reaches the planner through the shared parser:
adding a method needs no edit outside its own module.
"""

import random
from dataclasses import dataclass

from burst.allgather import AllGatherAttention, AllGatherPlanner
from burst.ring import RingAttention, RingOptions, RingPlanner
from burst.ulysses import UlyssesAttention, UlyssesPlanner
from longctx.options import option


def random_sizes(doc_len, world, seed=0):
    """`world` positive sizes summing to `doc_len`, seeded by (seed, doc_len, world), deliberately uneven."""
    rng = random.Random(seed * 1_000_003 + doc_len * 31 + world)
    cuts = sorted(rng.sample(range(1, doc_len), world - 1)) if world > 1 else []
    bounds = [0, *cuts, doc_len]
    return [after - before for before, after in zip(bounds, bounds[1:])]


@dataclass(frozen=True)
class UnevenOptions:
    """The plug-ins' own option."""

    uneven_seed: int = option(0, "uneven plug-ins: seed of the random block sizes", minimum=0)


@dataclass(frozen=True)
class UnevenRingOptions(RingOptions, UnevenOptions):
    """The ring's options plus the seed."""


class UnevenBlocks:
    """Planner mix-in: contiguous blocks of random sizes, whatever `--balance` says."""

    layouts = ("contiguous",)

    def plan(self, doc_len, query_len, world):
        """The contiguous layout with `random_sizes`, estimated."""
        sizes = random_sizes(doc_len, world, self.options.uneven_seed)
        return self.estimate(self.build(doc_len, query_len, world, sizes))


class UnevenRing(RingAttention):
    """Ring over random uneven contiguous blocks."""

    Options = UnevenRingOptions

    class Planner(UnevenBlocks, RingPlanner):
        pass


class UnevenUlysses(UlyssesAttention):
    """Ulysses over random uneven shards."""

    Options = UnevenOptions

    class Planner(UnevenBlocks, UlyssesPlanner):
        pass


class UnevenAllGather(AllGatherAttention):
    """All-gather over random uneven contiguous blocks (always the contiguous layout)."""

    Options = UnevenOptions

    class Planner(UnevenBlocks, AllGatherPlanner):
        pass
