"""Host-side plans: which worker holds which tokens of the document.

Pure Python, no torch.distributed. A `Plan` lists for every host the spans of global token
positions it owns (in the order they are laid out locally) and the cost model's estimate of
its time; a method with per-host facts of its own (APB's anchor and passing blocks) extends
`HostPlan` in its package.
Methods' planners (`longctx.planner`) build plans from the layouts (`longctx.layouts`); the
engine only executes them.

Balancing: `balanced_block_sizes` sizes contiguous blocks so that every host's estimated time
is the same (bisection on the common time), rounded to the kernel's tile.
"""

from dataclasses import dataclass, field

from longctx.errors import LongCtxError

# The per-host sizes every plan's JSON form lists, whatever the method (0 unless the method's host
# plan reports them in `details`), so `--json` output keeps one shape and the keys it always had.
REPORTED_SIZES = {"anchor_len": 0, "passing_len": 0}


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
    """One host's share: owned spans in local order, plus the cost model's estimate.

    A method that runs more than the owned tokens extends it with its own fields and reports
    them through `lead_len`, `received_len` and `details` (APB's `APBHostPlan`).
    """

    rank: int
    spans: tuple
    est_ms: float = None
    est_parts: dict = None

    @property
    def num_tokens(self):
        """How many document tokens this host owns."""
        return sum(len(span) for span in self.spans)

    @property
    def lead_len(self):
        """Rows the host runs in front of its owned tokens (dropped after prefill); none here."""
        return 0

    @property
    def received_len(self):
        """Keys of other hosts that one layer's attention holds beside the host's own (per KV
        head, not cached after the layer); none here."""
        return 0

    def details(self):
        """The method's own per-host facts for the plan's summary (a JSON-ready dict); none here."""
        return {}

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
        """Raise ValueError unless every document token is owned by exactly one host (and the
        hosts are listed in rank order)."""
        if [host.rank for host in self.hosts] != list(range(len(self.hosts))) or len(self.hosts) != self.world:
            raise ValueError(f"the plan must list hosts 0..{self.world - 1} in order")
        owned = bytearray(self.doc_len)
        for host in self.hosts:
            for span in host.spans:
                positions = span.positions()
                if not positions:
                    continue
                if span.step < 1 or positions[0] < 0 or positions[-1] >= self.doc_len:
                    raise ValueError(f"host {host.rank} owns positions {positions} outside the document")
                if owned[span.start : span.stop : span.step].count(0) != len(positions):
                    first = next(pos for pos in positions if owned[pos])
                    raise ValueError(f"position {first} is owned more than once (again by host {host.rank})")
                owned[span.start : span.stop : span.step] = b"\x01" * len(positions)
        if owned.count(0):
            raise ValueError(f"position {owned.index(0)} is owned by no host")
        return self

    def block_sizes(self):
        """Tokens per host, in rank order."""
        return [host.num_tokens for host in self.hosts]

    def estimates(self):
        """Per-host estimated milliseconds (None where a host has no estimate)."""
        return [host.est_ms for host in self.hosts]

    @property
    def critical_ms(self):
        """The slowest host's estimate: the plan's estimated critical path (None if not estimated)."""
        values = [value for value in self.estimates() if value is not None]
        return max(values) if values else None

    @property
    def mean_ms(self):
        """Mean of the per-host estimates (None if not estimated)."""
        values = [value for value in self.estimates() if value is not None]
        return sum(values) / len(values) if values else None

    def totals(self):
        """Plan totals: tokens, lead rows (in front of the owned tokens), keys received from
        other hosts, estimates."""
        critical, mean = self.critical_ms, self.mean_ms
        return {
            "doc_tokens": sum(self.block_sizes()),
            "lead_rows": sum(host.lead_len for host in self.hosts),
            "passing_received": sum(host.received_len for host in self.hosts),
            "critical_ms": critical,
            "mean_ms": None if mean is None else round(mean, 4),
            "imbalance": None if critical is None or not mean else round(critical / mean, 4),
        }

    def summary(self):
        """A JSON-ready description: per-host spans, sizes (`REPORTED_SIZES` and the method's
        `HostPlan.details`) and estimates, plus totals."""
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
                    **REPORTED_SIZES,
                    **host.details(),
                    "est_ms": host.est_ms,
                    "est_parts": host.est_parts,
                }
                for host in self.hosts
            ],
            "totals": self.totals(),
            **self.details,
        }


def split_sizes(total, parts):
    """Split `total` into `parts` sizes differing by at most one (larger ones first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


def contiguous_spans(sizes, start=0):
    """Back-to-back Spans with the given sizes, the first starting at `start`."""
    spans = []
    for size in sizes:
        spans.append(Span(start, start + size))
        start += size
    return spans


def check_sizes(sizes, doc_len, world):
    """LongCtxError unless `sizes` has one positive size per host and sums to `doc_len`; returns a list."""
    sizes = [int(size) for size in sizes]
    if len(sizes) != world or sum(sizes) != doc_len or min(sizes) < 1:
        raise LongCtxError(f"block sizes {sizes} do not give {world} non-empty blocks covering {doc_len} tokens")
    return sizes


def balanced_block_sizes(doc_len, world, host_cost, *, tile=1, speeds=None, rel_tol=1e-6):
    """Contiguous block sizes, one per host in rank order, that equalise estimated host times.

    `host_cost(rank, start, size)` is host `rank`'s estimated time (any unit) when it owns
    positions [start, start + size), at speed 1; it must not decrease as `size` grows (and
    should not grow as `start` grows for a fixed end). A host's time is cost / speeds[rank].

    Bisection on the common time T: for a given T, hosts are filled in rank order, each with
    the largest block whose time fits in T while leaving at least one token to every later
    host; T is the smallest time at which the last host reaches the end of the document.
    The few tokens left over just below T go one at a time to the host that stays fastest
    with one more. Block boundaries are then rounded to multiples of `tile` (the kernel's
    row tile) when that keeps every block non-empty. The sizes sum to `doc_len` exactly; every host gets at
    least one token. LongCtxError when `doc_len < world` or the speeds do not fit.
    """
    if doc_len < world:
        raise LongCtxError(f"a document of {doc_len} tokens is too short for {world} workers (needs at least {world})")
    speeds = check_speeds(speeds, world)
    if world == 1:
        return [doc_len]

    def seconds(rank, start, size):
        return host_cost(rank, start, size) / speeds[rank]

    def fill(limit):
        sizes, start = [], 0
        for rank in range(world):
            room = doc_len - start - (world - 1 - rank)
            if seconds(rank, start, room) <= limit:
                size = room
            elif seconds(rank, start, 1) > limit:
                size = 1
            else:
                fits, fails = 1, room
                while fails - fits > 1:
                    middle = (fits + fails) // 2
                    if seconds(rank, start, middle) <= limit:
                        fits = middle
                    else:
                        fails = middle
                size = fits
            sizes.append(size)
            start += size
        return sizes

    equal = contiguous_spans(split_sizes(doc_len, world))
    high = max(seconds(rank, span.start, len(span)) for rank, span in enumerate(equal))
    for _ in range(64):
        if sum(fill(high)) == doc_len:
            break
        high *= 2
    else:
        high = float("inf")
    low = 0.0
    while high != float("inf") and high - low > rel_tol * high:
        middle = (low + high) / 2
        if sum(fill(middle)) == doc_len:
            high = middle
        else:
            low = middle
    sizes = fill(low)
    if doc_len - sum(sizes) > 4 * world:  # not converged close enough to share out token by token
        return round_boundaries(fill(high), tile)
    while sum(sizes) < doc_len:
        starts = [sum(sizes[:rank]) for rank in range(world)]
        rank = min(range(world), key=lambda r: seconds(r, starts[r], sizes[r] + 1))
        sizes[rank] += 1
    return round_boundaries(sizes, tile)


def round_boundaries(sizes, tile):
    """`sizes` with every block boundary moved to the nearest multiple of `tile`.

    The first block still starts at 0 and the last ends at sum(sizes); when rounding would
    leave a block empty the sizes are returned unchanged.
    """
    if tile <= 1 or len(sizes) < 2:
        return list(sizes)
    bounds, total = [], 0
    for size in sizes:
        total += size
        bounds.append(total)
    rounded = [0] + [tile * ((bound + tile // 2) // tile) for bound in bounds[:-1]] + [total]
    steps = [after - before for before, after in zip(rounded, rounded[1:])]
    return steps if min(steps) >= 1 else list(sizes)


def check_speeds(speeds, world):
    """Relative host speeds as a list of `world` positive floats (all 1.0 when `speeds` is empty,
    and for a single worker, which has nothing to balance against)."""
    if not speeds or world == 1:
        return [1.0] * world
    speeds = [float(speed) for speed in speeds]
    if len(speeds) != world:
        raise LongCtxError(f"--host-speeds gives {len(speeds)} speeds for {world} workers")
    if min(speeds) <= 0:
        raise LongCtxError(f"--host-speeds must all be positive (got {min(speeds)})")
    return speeds
