"""Token layouts: which document positions each host holds, as named strategies.

A layout turns (document length, host count) into per-host span tuples, in local order. The
exact methods pick one with `--layout` (each method's planner lists the layouts it runs);
a method with a layout of its own (APB's anchors) builds its hosts in its package. The
pictures show the causal mask of 8 tokens on 2 hosts, one row per query, `x` a visible key.
"""

from abc import ABC, abstractmethod

from longctx.errors import LongCtxError
from longctx.plan import Span, check_sizes, contiguous_spans, split_sizes


class Layout(ABC):
    """A named way to split the document over hosts; `hosts` checks the document is long enough."""

    name = "base"
    resizable = False  # True when `hosts` takes block sizes (the planner can balance it)

    def min_tokens(self, world):
        """The shortest document this layout gives every one of `world` hosts a token."""
        return world

    def hosts(self, doc_len, world, sizes=None):
        """Per-host span tuples; LongCtxError when the document is too short."""
        self.check_length(doc_len, world)
        if sizes is not None and not self.resizable:
            raise LongCtxError(f"block sizes apply to the contiguous layout only (got {self.name!r})")
        return self.spans(doc_len, world, sizes)

    def check_length(self, doc_len, world):
        """LongCtxError unless `doc_len` tokens give each of `world` hosts its share."""
        need = self.min_tokens(world)
        if doc_len < need:
            raise LongCtxError(f"a document of {doc_len} tokens is too short for {world} workers with the "
                               f"{self.name} layout (needs at least {need} tokens)")

    @abstractmethod
    def spans(self, doc_len, world, sizes):
        """Per-host span tuples of a document long enough for this layout (`hosts` checked it)."""


class Contiguous(Layout):
    """Host r holds block r of `world` back-to-back blocks (as equal as possible, or `sizes`).

        keys      0 1 2 3 4 5 6 7
        host 0  0 x
                1 x x
                2 x x x
                3 x x x x                  host 0: 10 pairs
        host 1  4 x x x x x
                5 x x x x x x
                6 x x x x x x x
                7 x x x x x x x x          host 1: 26 pairs

    Later hosts see more keys: the planner's `--balance auto` gives them shorter blocks.
    """

    name = "contiguous"
    resizable = True

    def spans(self, doc_len, world, sizes):
        sizes = split_sizes(doc_len, world) if sizes is None else check_sizes(sizes, doc_len, world)
        return [(span,) for span in contiguous_spans(sizes)]


class Zigzag(Layout):
    """Host r holds chunks r and 2*world-1-r of 2*world chunks: an early and a late chunk.

        keys      0 1 2 3 4 5 6 7
        host 0  0 x
                1 x x
                6 x x x x x x x
                7 x x x x x x x x          host 0: 18 pairs
        host 1  2 x x x
                3 x x x x
                4 x x x x x
                5 x x x x x x              host 1: 18 pairs

    Each pair of chunk indices sums to 2*world-1, so causal work is balanced by construction.
    `pairs` and `virtual_blocks` give the same pairing of any 2*world blocks (virtual blocks
    whose work grows with their index, placed after a prefix).
    """

    name = "zigzag"

    def min_tokens(self, world):
        return 2 * world

    def spans(self, doc_len, world, sizes):
        return self.virtual_blocks(doc_len, world)

    @staticmethod
    def pairs(world):
        """(first, second) chunk index of each host: (r, 2*world-1-r)."""
        return [(rank, 2 * world - 1 - rank) for rank in range(world)]

    def virtual_blocks(self, doc_len, world, start=0, sizes=None):
        """Per host, its two Spans of 2*world blocks covering start..start+doc_len-1 (`sizes`:
        the 2*world block sizes, default as equal as possible)."""
        self.check_length(doc_len, world)
        sizes = split_sizes(doc_len, 2 * world) if sizes is None else check_sizes(sizes, doc_len, 2 * world)
        chunks = contiguous_spans(sizes, start)
        return [(chunks[first], chunks[second]) for first, second in self.pairs(world)]


class Striped(Layout):
    """Host r holds every position p with p % world == r.

        keys      0 1 2 3 4 5 6 7
        host 0  0 x
                2 x x x
                4 x x x x x
                6 x x x x x x x            host 0: 16 pairs
        host 1  1 x x
                3 x x x x
                5 x x x x x x
                7 x x x x x x x x          host 1: 20 pairs

    Hosts differ by at most one key per query row: balanced up to world - 1 keys per row.
    """

    name = "striped"

    def spans(self, doc_len, world, sizes):
        return [(Span(rank, doc_len, world),) for rank in range(world)]


CONTIGUOUS, ZIGZAG, STRIPED = Contiguous(), Zigzag(), Striped()
LAYOUTS = {layout.name: layout for layout in (CONTIGUOUS, ZIGZAG, STRIPED)}


def get_layout(name):
    """The layout named `name`; LongCtxError if there is none."""
    if name not in LAYOUTS:
        raise LongCtxError(f"unknown layout {name!r}; choose one of {', '.join(LAYOUTS)}")
    return LAYOUTS[name]
