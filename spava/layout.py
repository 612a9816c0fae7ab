"""Spava's layout: the anchor, virtual blocks placed on hosts, and each host's kernel calls.

Pure Python (no torch), so the driver validates requests and `longctx plan` prints plans with
it. The document's first `a` tokens (l_a) are the **anchor**, which every host runs in front of
its blocks at positions 0..a-1; the other n - a tokens are cut into **virtual blocks** (as
equal as possible). With `zigzag` (the default) there are 2W of them and host r holds blocks r
and 2W-1-r (`longctx.layouts.Zigzag.pairs`); without it (the reference's `nz` ablation) there
are W, host r holding block r, each passing twice l_p (so a host passes as many keys as with
two blocks). The question follows on every host at its true positions n..n+q-1 (unless the
method leaves it out of the prefill). 2 hosts, d0..d11, a = 4:

                 lead rows (anchor)   first block   second block   question
        zigzag   host 0   d0 d1 d2 d3 v0: d4 d5     v3: d10 d11    q q
                 host 1   d0 d1 d2 d3 v1: d6 d7     v2: d8  d9     q q
        W blocks host 0   d0 d1 d2 d3 v0: d4 d5 d6 d7               q q
                 host 1   d0 d1 d2 d3 v1: d8 d9 d10 d11             q q

Default sizes follow the reference code (thunlp/APB, `modeling_qwen2_5_vl_apbvz.py`): l_a =
n // 64 and l_p = n // 128, each rounded up to a multiple of 128 (`reference_size`).

Virtual block v passes its top-l_p keys per KV head (all of them when it is shorter; the
last virtual block passes nothing) and receives P_v = the passed keys of virtual blocks
0..v-1, so its passing work grows with v and the zigzag pairs even it out. The anchor's K/V
is cached once over all hosts: host r keeps the r-th of W equal shards (`anchor_sharding`),
or host 0 keeps all of it; a host owns its shard and its blocks, so the plan's spans are
(shard, first block[, second block]) in local order.
"""

import math
from dataclasses import dataclass

from longctx.errors import LongCtxError
from longctx.layouts import Zigzag
from longctx.plan import HostPlan, Plan, Span, contiguous_spans, split_sizes


@dataclass(frozen=True)
class SpavaSizes:
    """Resolved sizes of one run: `anchor` = l_a and `passing` = l_p (keys per KV head each
    virtual block passes at most)."""

    anchor: int
    passing: int


def reference_size(doc_len, divisor, tile=128):
    """The reference's size rule: (doc_len // divisor) rounded up to a multiple of `tile`
    (thunlp/APB rounds to 128: `128 * math.ceil((seq_len // 64) / 128)`); 0 stays 0."""
    return tile * math.ceil((doc_len // divisor) / tile)


def resolve_sizes(options, doc_len, world, blocks_per_host=2):
    """l_a and l_p from `options` (anchor_len / passing_len; defaults `reference_size` of n/64
    and n/128 on the `size_tile`, the default anchor shortened where a short document would
    leave fewer than `blocks_per_host` tokens per host after it); one worker runs exactly (no
    anchor, every key passed). LongCtxError when the anchor leaves too few tokens."""
    blocks = blocks_per_host * world
    if options.anchor_len is None:
        anchor = min(reference_size(doc_len, 64, options.size_tile), max(0, doc_len - blocks))
    else:
        anchor = options.anchor_len
    passing = reference_size(doc_len, 128, options.size_tile) if options.passing_len is None else options.passing_len
    if world == 1:
        anchor, passing = 0, doc_len
    if doc_len - anchor < blocks:
        raise LongCtxError(f"a document of {doc_len} tokens with a {anchor}-token anchor is too short for "
                           f"{world} workers (spava needs at least {anchor + blocks} tokens: {blocks_per_host} per "
                           f"worker after the anchor)")
    return SpavaSizes(anchor, passing)


@dataclass
class SpavaHostPlan(HostPlan):
    """HostPlan plus Spava's facts. `spans` are (anchor shard, first block[, second block]);
    `anchor_len` is the whole anchor the host runs in front of its blocks; `virtual` the
    virtual block indices (two with the zigzag, one without); `sends` the keys per KV head each
    block passes; `passing` the passing keys each block attends to (P_v lengths);
    `passing_len` their sum."""

    anchor_len: int = 0
    passing_len: int = 0
    virtual: tuple = ()
    sends: tuple = ()
    passing: tuple = ()

    @property
    def lead_len(self):
        """The anchor's rows, in front of both blocks."""
        return self.anchor_len

    @property
    def received_len(self):
        """Passing keys of both blocks."""
        return self.passing_len

    def details(self):
        """anchor_len and passing_len, for the plan's summary."""
        return {"anchor_len": self.anchor_len, "passing_len": self.passing_len}

    @property
    def shard(self):
        """The anchor shard this host caches (a Span of positions 0..a-1)."""
        return self.spans[0]

    @property
    def blocks(self):
        """The virtual blocks' Spans, in local order."""
        return self.spans[1:]

    def block_rows(self, index):
        """Local rows of block `index` (0, or 1 with two blocks): after the anchor's rows."""
        start = self.anchor_len + sum(len(span) for span in self.blocks[:index])
        return slice(start, start + len(self.blocks[index]))

    @property
    def local_len(self):
        """Rows before the question: the anchor and the blocks."""
        return self.anchor_len + sum(len(span) for span in self.blocks)


@dataclass(frozen=True)
class BlockCall:
    """One kernel call of a Spava host's layer: queries `q_rows` over [P_v ; keys `k_rows`],
    bottom-right causal; query rows below `anchor_len` skip P_v (the APB mask)."""

    block: int
    q_rows: slice
    k_rows: tuple
    passing: int
    anchor_len: int = 0


def block_calls(host):
    """What host r attends to in one layer (`SpavaAttention` runs these, the planner counts them):

      first block:   [anchor ; block] x [P_v1 ; anchor ; block], anchor rows skip P_v1
      second block:  block x [P_v2 ; anchor ; block]          (zigzag only)

    P_v are the passed keys of every earlier virtual block (the host's own first block's
    included, as passed). The question's rows are not here.
    """
    anchor = slice(0, host.anchor_len)
    first = host.block_rows(0)
    calls = [BlockCall(0, slice(0, first.stop), (slice(0, first.stop),), host.passing[0], host.anchor_len)]
    for index in range(1, len(host.blocks)):
        rows = host.block_rows(index)
        calls.append(BlockCall(index, rows, (anchor, rows), host.passing[index]))
    return calls


def cached_rows(host):
    """Local rows whose K/V the host keeps after prefill: its anchor shard, then its blocks."""
    return [*host.shard.positions(), *range(host.anchor_len, host.local_len)]


def virtual_sizes(doc_len, blocks, anchor):
    """Sizes of the `blocks` virtual blocks of the n - a tokens after the anchor."""
    return split_sizes(doc_len - anchor, blocks)


def passing_table(sizes, passing):
    """(sends, received) per virtual block: block v passes min(l_p, its size) keys (the last
    block nothing) and receives the sum of what blocks 0..v-1 pass."""
    sends = [min(passing, size) for size in sizes[:-1]] + [0]
    received = [sum(sends[:index]) for index in range(len(sizes))]
    return sends, received


def build_plan(name, doc_len, query_len, world, sizes, zigzag=True, anchor_sharding=True):
    """The validated Plan with SpavaHostPlan hosts; `details` list the virtual blocks, the
    anchor and the passing sizes. `zigzag` False: W blocks, one per host, each passing
    2 * sizes.passing keys (the reference's `nz`). The question's K/V is kept by host 0
    (`append_rank`)."""
    anchor = sizes.anchor
    block_sizes = virtual_sizes(doc_len, 2 * world if zigzag else world, anchor)
    pairs = Zigzag.pairs(world) if zigzag else [(rank,) for rank in range(world)]
    chunks = contiguous_spans(block_sizes, anchor)
    sends, received = passing_table(block_sizes, sizes.passing if zigzag else 2 * sizes.passing)
    shard = -(-anchor // world) if anchor_sharding else anchor
    hosts = []
    for rank, pair in enumerate(pairs):
        start = min(rank * shard, anchor)
        spans = (Span(start, min(start + shard, anchor)),) + tuple(chunks[index] for index in pair)
        hosts.append(SpavaHostPlan(rank, spans, anchor_len=anchor, passing_len=sum(received[i] for i in pair),
                                   virtual=pair, sends=tuple(sends[i] for i in pair),
                                   passing=tuple(received[i] for i in pair)))
    details = {"anchor_len": anchor, "passing_len": sizes.passing if zigzag else 2 * sizes.passing,
               "virtual_block_sizes": block_sizes,
               "virtual_blocks": [list(pair) for pair in pairs], "passing_tokens": sends,
               "anchor_shards": [len(host.shard) for host in hosts]}
    return Plan(name, doc_len, query_len, world, hosts, layout="zigzag" if zigzag else "contiguous",
                append_rank=0, details=details).validate()
