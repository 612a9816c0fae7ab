"""APB / StarAttention layout: block, anchor and passing sizes, each host's lead rows, its kernel calls.

Pure Python (no torch), so the driver can validate a request before any worker is
involved. The document is split contiguously into one block per host: as equally as
possible (`split_sizes`), or balanced so every host's estimated time is the same (host h
attends to h*l_p more passing keys than host 0, and hosts > 0 also run the anchor, so later
hosts get shorter blocks; `APBPlanner.balanced_sizes`). l_b, the block the size rule
starts from, is the *equal* split's largest block, ceil(doc_len / hosts), whichever way the
blocks are sized: l_a and l_p do not change when the plan is balanced, so the published
setting (128K on 8 hosts: l_a = 4K, l_p = 2K) stays what it is. A block shorter than l_p
passes all of its candidates. In front of its block a host may run *lead* rows at
positions 0..lead_len-1, whose rows are dropped after prefill:

* the **anchor** (hosts > 0, when l_a > 0): `head_len` leading document tokens, then the
  question (APB only), then more leading document tokens, l_a tokens in all. The local block
  attends to it.
* a **probe** (APB hosts without an anchor whose passing block must be chosen knowing the
  question): the leading document tokens and the question only; the local block does *not*
  attend to it, it exists so the query-aware compressor has question queries at every layer.
"""

from dataclasses import dataclass

from longctx.errors import LongCtxError
from longctx.plan import HostPlan, Plan, Span, check_sizes, split_sizes


@dataclass
class APBHostPlan(HostPlan):
    """HostPlan plus APB's lead rows and passing facts.

    `anchor_len` is the visible anchor; `probe_len` the invisible question probe (at most one
    of them is non-zero). Lead rows [head_len, head_len + question_len) hold the question.
    `sends` is how many keys per KV head this host passes each layer (0: it passes nothing);
    `protected` leading local rows are never passed (host 0's first l_a tokens). `passing_len`
    is the length of the passing block this host receives.
    """

    anchor_len: int = 0
    passing_len: int = 0
    probe_len: int = 0
    head_len: int = 0
    question_len: int = 0
    sends: int = 0
    protected: int = 0

    @property
    def lead_len(self):
        """Rows in front of the local block (anchor or probe)."""
        return self.anchor_len + self.probe_len

    @property
    def received_len(self):
        """The passing block's length."""
        return self.passing_len

    def details(self):
        """anchor_len and passing_len, for the plan's summary."""
        return {"anchor_len": self.anchor_len, "passing_len": self.passing_len}

    @property
    def candidates(self):
        """How many local keys may be passed."""
        return max(0, self.num_tokens - self.protected)

    @property
    def selects(self):
        """True when the host must score its keys (it passes some but not all candidates)."""
        return 0 < self.sends < self.candidates


@dataclass(frozen=True)
class Sizes:
    """Resolved per-run sizes: `block` = l_b, `anchor` = l_a, `passing` = l_p; `note` says what was adjusted.

    `passing_ratio`, when the passing size was given as a ratio, makes each host send that
    fraction of its own block (so a ratio of 1 passes every block whole on balanced plans too);
    `passing` is then the ratio of the equal block, for estimates.
    """

    block: int
    anchor: int
    passing: int
    note: str = ""
    passing_ratio: float = None

    def sends(self, block):
        """Passing keys per KV head a host with a block of `block` tokens may send (before its
        candidates cap it)."""
        return self.passing if self.passing_ratio is None else round(self.passing_ratio * block)


def rule_length(block, divisor, tile=64):
    """The published size rule: block // divisor, rounded to the nearest multiple of `tile` once it reaches one tile.

    Blocks too small for a whole tile keep the exact quotient, so any document length works.
    """
    length = block // divisor
    return tile * round(length / tile) if length >= tile else length


def _explicit(value, ratio, block):
    """Token count from an explicit length or a ratio of the block; None when neither is given."""
    if value is not None:
        return value
    if ratio is not None:
        return round(ratio * block)
    return None


def resolve_sizes(options, doc_len, query_len, world, *, star):
    """l_b, l_a, l_p for a run; LongCtxError (one line) on a bad combination.

    `options` are APB's options (anchor_len / passing_len / their ratios, anchor_head_tokens).
    APB defaults: l_a = l_b/4, l_p = l_b/8 (`rule_length`); Star: l_a = l_b, no passing. When
    the default APB anchor is too short for the question it grows to hold the question plus up
    to `anchor_head_tokens` document tokens (said in `note`); an explicit one is an error.
    """
    block = split_sizes(doc_len, world)[0]
    anchor = _explicit(options.anchor_len, options.anchor_ratio, block)
    passing = _explicit(options.passing_len, options.passing_ratio, block)
    if star and passing:
        raise LongCtxError("method 'star' passes no blocks; drop --passing-len / --passing-ratio (or use --method apb)")
    anchor_given = anchor is not None
    if anchor is None:
        anchor = block if star else rule_length(block, 4)
    passing = 0 if star else (rule_length(block, 8) if passing is None else passing)
    for name, value in (("anchor", anchor), ("passing", passing)):
        if not 0 <= value <= block:
            raise LongCtxError(
                f"the {name} length must be between 0 and the block size {block} "
                f"({doc_len} tokens over {world} workers); got {value}"
            )
    note = ""
    if not star and world > 1 and 0 < anchor < query_len:
        if anchor_given:
            raise LongCtxError(
                f"the question ({query_len} tokens) is longer than the anchor ({anchor} tokens); "
                f"use --anchor-len of at least {query_len}"
            )
        if query_len > block:
            raise LongCtxError(
                f"the question ({query_len} tokens) does not fit in an anchor of at most one block "
                f"({block} tokens); use fewer workers or a longer document"
            )
        grown = min(block, query_len + options.anchor_head_tokens)
        note = f"anchor grown from {anchor} to {grown} tokens to hold the {query_len}-token question"
        anchor = grown
    ratio = options.passing_ratio if options.passing_len is None and not star else None
    return Sizes(block, anchor, passing, note, ratio)


@dataclass(frozen=True)
class APBLayout:
    """APB's layout of one run: contiguous blocks (`split_sizes`, or `block_sizes` from the
    planner), each host with its lead rows, the keys it sends and the passing block it receives.

    3 hosts, document d0..d11, question q (2 tokens), l_a = 4 with 2 head tokens, l_p = 2:

                 lead rows (dropped after prefill)   block (cached)    keys P_h per layer
        host 0   d0 d1 q  q    probe, not attended   d0  d1  d2  d3    -
        host 1   d0 d1 q  q    anchor                d4  d5  d6  d7    2 of host 0's
        host 2   d0 d1 q  q    anchor                d8  d9  d10 d11   2 of host 0's + 2 of host 1's

    Host 0 never passes its first l_a tokens (the anchors hold them); the last host passes
    nothing; Star's anchor holds document tokens only and nothing is passed.
    `question` is the question's length in the anchor (0 for Star); `needs_question`: hosts
    that select keys without an anchor run a probe with the question.
    """

    sizes: Sizes
    doc_len: int
    query_len: int
    world: int
    question: int
    needs_question: bool
    head_tokens: int

    def host(self, rank, start, size):
        """Host `rank` owning [start, start + size): lead rows, protected rows, keys it sends
        (its `passing_len` is set by `plan`)."""
        sizes = self.sizes
        host = APBHostPlan(rank, (Span(start, start + size),))
        if rank > 0 and sizes.anchor > 0:
            host.anchor_len, host.question_len = sizes.anchor, self.question
        if rank < self.world - 1:
            host.protected = min(size, sizes.anchor) if rank == 0 else 0
            host.sends = min(sizes.sends(size), host.candidates)
        if self.needs_question and host.selects and host.anchor_len == 0:
            host.question_len = self.query_len
            host.probe_len = min(self.head_tokens, self.doc_len) + self.query_len
        host.head_len = min(self.head_tokens, host.lead_len - host.question_len)
        return host

    def trial_host(self, rank, start, size):
        """`host`, while blocks are being sized: its passing block is taken as min(rank * l_p,
        keys before it that may be passed) (exact unless an earlier block is shorter than l_p)."""
        host = self.host(rank, start, size)
        host.passing_len = min(rank * self.sizes.passing, start - min(start, self.sizes.anchor))
        return host

    def plan(self, name, block_sizes=None):
        """The validated Plan with APBHostPlan hosts (equal blocks unless `block_sizes`);
        append_rank is the last host."""
        doc_len, world, sizes = self.doc_len, self.world, self.sizes
        if doc_len < world:
            raise LongCtxError(f"a document of {doc_len} tokens is too short for {world} workers "
                               f"(needs at least {world})")
        block_sizes = split_sizes(doc_len, world) if block_sizes is None else check_sizes(block_sizes, doc_len, world)
        hosts, start = [], 0
        for rank, size in enumerate(block_sizes):
            hosts.append(self.host(rank, start, size))
            start += size
        for host in hosts:
            host.passing_len = sum(other.sends for other in hosts[: host.rank])
        details = {
            "anchor_len": sizes.anchor if world > 1 else 0,
            "passing_len": sizes.passing if world > 1 else 0,
            "block_sizes": [host.num_tokens for host in hosts],
            "passing_tokens": [host.sends for host in hosts],
            "question_in_anchor": bool(self.question and world > 1 and sizes.anchor),
        }
        if sizes.note:
            details["note"] = sizes.note
        return Plan(name, doc_len, self.query_len, world, hosts, layout="contiguous", append_rank=world - 1,
                    details=details).validate()


@dataclass(frozen=True)
class AttendCall:
    """One kernel call of an APB host's layer, in rows of its local sequence [lead ; local]:
    queries `q_rows` over keys `k_rows`, bottom-right causal, after the passing block P_h when
    `passing`; query rows below `anchor_len` do not see P_h."""

    q_rows: slice
    k_rows: slice
    passing: bool
    anchor_len: int = 0


def attention_calls(host):
    """What host h attends to in one layer (`APBAttention.prefill_attention` runs these calls,
    the planner counts them):

      with an anchor:  [anchor ; local] x [P_h ; anchor ; local], anchor rows skip P_h:
                       anchor rows see the anchor causally, local rows see all of P_h, all of
                       the anchor and their block causally (one call);
      without:         local x [P_h ; local], and a probe's rows causally over the probe only.
    """
    lead, end = host.lead_len, host.lead_len + host.num_tokens
    if host.anchor_len:
        return [AttendCall(slice(0, end), slice(0, end), True, lead)]
    probe = [AttendCall(slice(0, lead), slice(0, lead), False)] if lead else []
    return probe + [AttendCall(slice(lead, end), slice(lead, end), True)]


def lead_inputs(host, doc_ids, query_ids):
    """(input_ids, position_ids) of `host`'s lead rows: head tokens, question, more document tokens.

    Positions are 0..lead_len-1. Who calls it: `APBAttention.local_inputs`.
    """
    tail = host.lead_len - host.head_len - host.question_len
    ids = list(doc_ids[: host.head_len])
    if host.question_len:
        ids += list(query_ids)
    ids += list(doc_ids[host.head_len : host.head_len + tail])
    return ids, list(range(host.lead_len))
