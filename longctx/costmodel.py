"""Cost model: how long one host takes to prefill its share of a plan.

Pure Python (no torch, no torch.distributed), so the driver and `longctx plan` can use it.
Per host and per layer the estimate adds four parts:

* token work: every row the host runs (owned tokens plus rows run in front of them) goes
  through the projections and the MLP, `ModelShape.token_flops` FLOPs per row, at `linear_gflops`;
* attention work: the query-key pairs of the host's kernel calls (`KernelCall`), summed over
  query heads, 4 * head_dim FLOPs per pair, at `attention_gflops`. A kernel that skips masked
  blocks (Triton, FlashAttention, the fused CPU path: `attention_pairs` "visible") computes
  the pairs its mask leaves visible (`HostWork.head_pairs`); the torch reference
  (`attention_pairs` "all") computes every query x key score of each call and masks after
  (`HostWork.head_rect_pairs`);
* compressor work: keys scored to choose what to pass on, per KV head, `compress_ns_per_key`;
* communication: bytes received over a link of `link_gb_per_s` plus `message_us` per message;
  hidden behind attention when the transfers overlap it (`HostWork.overlapped`: the larger
  of the two counts), else waited for;
* a method's own work: nanoseconds its planner computes from coefficients it calibrates
  itself (`HostWork.method_ns`, `CostCoefficients.coefficient`).

A host's time is the sum over layers divided by its relative speed (`--host-speeds`). What a
host computes is a `HostWork`, which each method's planner builds (`Planner.host_work`) from
the same helpers its attention runs, so the counts follow the real attention pattern.
Coefficients: `longctx.costs`.
"""

import math
from dataclasses import asdict, dataclass, field, fields

from longctx.costs import CostCoefficients, dtype_bytes, load_costs, resolve_device_type
from longctx.errors import LongCtxError
from longctx.plan import check_speeds


@dataclass(frozen=True)
class ModelShape:
    """What the cost model needs to know about a model (defaults: Llama-3.1-8B in bfloat16)."""

    layers: int = 32
    hidden: int = 4096
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    intermediate: int = 14336
    dtype_bytes: int = 2

    @classmethod
    def from_config(cls, config, dtype_bytes=2):
        """Shape of a Hugging Face config (only the config is read, never weights)."""
        text = getattr(config, "text_config", None) or config
        heads = text.num_attention_heads
        hidden = text.hidden_size
        head_dim = getattr(text, "head_dim", None) or hidden // heads
        return cls(
            layers=text.num_hidden_layers,
            hidden=hidden,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate=getattr(text, "intermediate_size", None) or 4 * hidden,
            dtype_bytes=dtype_bytes,
        )

    def validate(self):
        """LongCtxError unless every size is positive and the heads group evenly; returns self."""
        for item in fields(self):
            if getattr(self, item.name) < 1:
                raise LongCtxError(f"model shape: {item.name} must be at least 1 (got {getattr(self, item.name)})")
        if self.heads % self.kv_heads:
            raise LongCtxError(f"model shape: {self.heads} heads are not a multiple of {self.kv_heads} KV heads")
        return self

    @property
    def token_flops(self):
        """FLOPs per row per layer outside attention: q/k/v/o projections and a gated MLP."""
        projections = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return 2 * (projections + 3 * self.hidden * self.intermediate)

    @property
    def pair_flops(self):
        """FLOPs per query-key pair and query head (q.k and p.v)."""
        return 4 * self.head_dim

    @property
    def kv_bytes(self):
        """Bytes of one token's K and V in one layer."""
        return 2 * self.kv_heads * self.head_dim * self.dtype_bytes

    def summary(self):
        """JSON-ready dict."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# What one host computes (per layer)


@dataclass(frozen=True)
class KernelCall:
    """One attention kernel call as `longctx.kernels.attention` is called: `q_len` queries over
    `k_len` keys, bottom-right causal or not; queries below `anchor_len` skip the first
    `prefix_len` keys (the kernel's arguments of the same names)."""

    q_len: int
    k_len: int
    causal: bool = True
    anchor_len: int = 0
    prefix_len: int = 0

    @property
    def scores(self):
        """Every query x key score of the call (what a kernel that masks after computing pays)."""
        return self.q_len * self.k_len

    @property
    def visible(self):
        """Query-key pairs the mask leaves visible (what a block-skipping kernel computes)."""
        shift = self.k_len - self.q_len + 1 if self.causal else self.k_len  # row i sees keys < i + shift
        if self.anchor_len <= 0 or self.prefix_len <= 0:
            return _ramp(0, self.q_len, shift, self.k_len)
        anchor, skip = min(self.anchor_len, self.q_len), min(self.prefix_len, self.k_len)
        return _ramp(0, anchor, shift - skip, self.k_len - skip) + _ramp(anchor, self.q_len, shift, self.k_len)


def _ramp(lo, hi, shift, cap):
    """Sum over rows i in [lo, hi) of min(cap, max(0, i + shift)), in closed form."""
    if hi <= lo or cap <= 0:
        return 0
    first, last = lo + shift, hi + shift  # values first .. last - 1
    low, high = max(first, 1), min(last, cap + 1)
    rising = (low + high - 1) * (high - low) // 2 if high > low else 0
    return rising + cap * max(0, last - max(first, cap + 1))


@dataclass(frozen=True)
class HostWork:
    """One host's work in one layer.

    rows: rows through projections and MLP; head_pairs: query-key pairs visible under the
    method's mask, summed over query heads; head_rect_pairs: query x key scores of every
    kernel call (q_len * k_len), summed over query heads; scored_keys: keys the compressor
    scores, summed over KV heads; recv_bytes and messages: what the host receives;
    overlapped: communication hides behind attention; method_ns: nanoseconds of the method's
    own work (its coefficients times its units).
    """

    rows: int = 0
    head_pairs: int = 0
    head_rect_pairs: int = 0
    scored_keys: int = 0
    recv_bytes: int = 0
    messages: int = 0
    overlapped: bool = False
    method_ns: float = 0.0

    @classmethod
    def of_calls(cls, calls, heads, **values):
        """HostWork whose attention is the `KernelCall`s `calls`, each run for `heads` query heads."""
        calls = list(calls)
        return cls(head_pairs=heads * sum(call.visible for call in calls),
                   head_rect_pairs=heads * sum(call.scores for call in calls), **values)


def local_work(spans, shape):
    """Causal attention among the host's own tokens only, no communication (one kernel call)."""
    rows = sum(len(span) for span in spans)
    return HostWork.of_calls([KernelCall(rows, rows)], shape.heads, rows=rows)


# ---------------------------------------------------------------------------------------------
# Estimates


@dataclass(frozen=True)
class HostEstimate:
    """Estimated milliseconds of one host for the whole prefill (all layers), by part."""

    token_ms: float
    attention_ms: float
    compress_ms: float
    comm_ms: float
    total_ms: float
    method_ms: float = 0.0

    def summary(self):
        """JSON-ready dict with rounded numbers (`method_ms` only for a method with work of its own)."""
        return {key: round(value, 4) for key, value in asdict(self).items() if key != "method_ms" or value}


@dataclass
class CostModel:
    """Coefficients + model shape + relative host speeds: turns `HostWork` into milliseconds."""

    shape: ModelShape = field(default_factory=ModelShape)
    coeffs: CostCoefficients = None
    speeds: tuple = None

    def __post_init__(self):
        if self.coeffs is None:
            self.coeffs = load_costs("cpu")

    @classmethod
    def for_config(cls, config, shape=None):
        """The cost model of a RunConfig: its device's coefficients (`config.costs` file or the
        default chain of `load_costs`), `shape` (default: ModelShape() with the run's dtype) and
        `config.host_speeds`."""
        device = resolve_device_type(config.device)
        coeffs = load_costs(device, getattr(config, "costs", None))
        if shape is None:
            shape = ModelShape(dtype_bytes=dtype_bytes(config.dtype, device))
        return cls(shape, coeffs, getattr(config, "host_speeds", None))

    def speed(self, rank):
        """Relative speed of host `rank` (1.0 when no speeds are given or `rank` is None)."""
        if not self.speeds or rank is None:
            return 1.0
        if rank >= len(self.speeds):
            raise LongCtxError(f"--host-speeds gives {len(self.speeds)} speeds for more workers ({rank + 1} or more)")
        return float(self.speeds[rank])

    def host_estimate(self, work, rank=None, speed=None):
        """HostEstimate of `work` (one layer) over all layers, at `speed` (default: host `rank`'s
        speed; speed 1 when `rank` is None too)."""
        shape, coeffs = self.shape, self.coeffs
        layers = shape.layers / (self.speed(rank) if speed is None else speed)
        token = work.rows * shape.token_flops / (coeffs.linear_gflops * 1e6)
        pairs = work.head_rect_pairs if coeffs.attention_pairs == "all" else work.head_pairs
        attention = pairs * shape.pair_flops / (coeffs.attention_gflops * 1e6)
        compress = work.scored_keys * coeffs.compress_ns_per_key * 1e-6
        comm = work.recv_bytes / (coeffs.link_gb_per_s * 1e6) + work.messages * coeffs.message_us * 1e-3
        exposed = max(attention, comm) - attention if work.overlapped else comm
        own = work.method_ns * 1e-6
        total = token + attention + compress + exposed + own
        return HostEstimate(token * layers, attention * layers, compress * layers, comm * layers, total * layers,
                            own * layers)

    def host_ms(self, work, rank=None):
        """Total estimated milliseconds of `work` on host `rank` (None: at speed 1)."""
        return self.host_estimate(work, rank).total_ms

    def annotate(self, plan, works):
        """Set every host's `est_ms` / `est_parts` from `works` (one HostWork per host) and
        record the plan totals in `plan.details["estimate"]`; returns the plan."""
        speeds = check_speeds(self.speeds, plan.world)
        for host, work in zip(plan.hosts, works):
            estimate = self.host_estimate(work, speed=speeds[host.rank])
            host.est_ms = round(estimate.total_ms, 4)
            host.est_parts = estimate.summary()
        plan.details["estimate"] = self.describe()
        return plan

    def describe(self):
        """JSON-ready description: device, coefficient source, shape and speeds."""
        return {
            "device": self.coeffs.device,
            "costs": self.coeffs.source,
            "shape": self.shape.summary(),
            "host_speeds": list(self.speeds) if self.speeds else None,
        }


def imbalance(values):
    """max / mean of per-host estimates (1.0 = perfectly balanced); nan when there are none."""
    values = [value for value in values if value is not None]
    if not values:
        return math.nan
    mean = sum(values) / len(values)
    return max(values) / mean if mean > 0 else 1.0
