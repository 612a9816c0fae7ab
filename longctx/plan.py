"""Host-side planning: which worker holds which tokens of the document.

Pure Python, no torch.distributed. A `Plan` lists for every host the spans of global token
positions it owns (in the order they are laid out locally), plus per-method sizes (anchor,
passing). Methods build plans with the layout helpers here; the engine only executes them.
"""

from dataclasses import dataclass, field

from longctx.errors import LongCtxError

LAYOUTS = ("contiguous", "zigzag", "striped")


@dataclass(frozen=True)
class Span:
    """Global token positions range(start, stop, step) held by one host."""

    start: int
    stop: int
    step: int = 1

    def __len__(self):
        return len(range(self.start, self.stop, self.step))

    def positions(self):
        """The global positions as a range object."""
        return range(self.start, self.stop, self.step)


@dataclass
class HostPlan:
    """One host's share: owned spans in local order, plus method sizes and an estimate."""

    rank: int
    spans: tuple
    anchor_len: int = 0
    passing_len: int = 0
    est_ms: float = None

    @property
    def num_tokens(self):
        """How many document tokens this host owns."""
        return sum(len(span) for span in self.spans)

    def positions(self):
        """Owned global positions in local order (a list of ints)."""
        return [pos for span in self.spans for pos in span.positions()]


@dataclass
class Plan:
    """Who holds which document tokens for one method run.

    `doc_len` document tokens are split over `world` hosts; `query_len` question tokens are
    processed after the document by every host, and the K/V of the query and of generated
    tokens is kept by `append_rank`. `details` holds method-specific facts for reporting.
    """

    method: str
    doc_len: int
    query_len: int
    world: int
    hosts: list
    layout: str = "contiguous"
    append_rank: int = 0
    details: dict = field(default_factory=dict)

    def validate(self):
        """Raise ValueError unless every document token is owned by exactly one host."""
        owned = [0] * self.doc_len
        for host in self.hosts:
            for pos in host.positions():
                if not 0 <= pos < self.doc_len:
                    raise ValueError(f"host {host.rank} owns position {pos} outside the document")
                owned[pos] += 1
        bad = [pos for pos, count in enumerate(owned) if count != 1]
        if bad:
            raise ValueError(f"positions owned {owned[bad[0]]} times, first at {bad[0]}")
        return self

    def summary(self):
        """A JSON-ready description: per-host spans, sizes and estimates."""
        return {
            "method": self.method,
            "layout": self.layout,
            "doc_len": self.doc_len,
            "query_len": self.query_len,
            "world": self.world,
            "append_rank": self.append_rank,
            "hosts": [
                {
                    "rank": host.rank,
                    "tokens": host.num_tokens,
                    "spans": [[span.start, span.stop, span.step] for span in host.spans],
                    "anchor_len": host.anchor_len,
                    "passing_len": host.passing_len,
                    "est_ms": host.est_ms,
                }
                for host in self.hosts
            ],
            **self.details,
        }


def split_sizes(total, parts):
    """Split `total` into `parts` sizes differing by at most one (larger ones first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


def _chunk_spans(total, parts):
    """Contiguous spans covering range(total) with sizes from `split_sizes`."""
    spans, start = [], 0
    for size in split_sizes(total, parts):
        spans.append(Span(start, start + size))
        start += size
    return spans


def layout_hosts(doc_len, world, layout):
    """Per-host span tuples for `layout` in LAYOUTS, checking the document is long enough.

    contiguous: host r holds chunk r of `world` chunks; zigzag: chunks r and 2*world-1-r of
    2*world chunks (balances causal attention); striped: every position p with p % world == r.
    """
    if layout not in LAYOUTS:
        raise LongCtxError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    need = 2 * world if layout == "zigzag" else world
    if doc_len < need:
        raise LongCtxError(
            f"a document of {doc_len} tokens is too short for {world} workers with the {layout} "
            f"layout (needs at least {need} tokens)"
        )
    if layout == "contiguous":
        return [(span,) for span in _chunk_spans(doc_len, world)]
    if layout == "zigzag":
        chunks = _chunk_spans(doc_len, 2 * world)
        return [(chunks[rank], chunks[2 * world - 1 - rank]) for rank in range(world)]
    return [(Span(rank, doc_len, world),) for rank in range(world)]


def simple_plan(method, doc_len, query_len, world, layout):
    """A validated plan with hosts from `layout_hosts` and no anchor/passing (exact methods)."""
    if doc_len < 1:
        raise LongCtxError("the document is empty")
    hosts = [HostPlan(rank, spans) for rank, spans in enumerate(layout_hosts(doc_len, world, layout))]
    return Plan(method, doc_len, query_len, world, hosts, layout=layout).validate()
