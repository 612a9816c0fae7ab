"""Cost model: how long one host takes to prefill its share of a plan.

Pure Python (no torch, no torch.distributed), so the driver and `longctx plan` can use it.
Per host and per layer the estimate adds four parts:

* token work: every row the host runs (owned tokens plus anchor / probe rows) goes through
  the projections and the MLP, `ModelShape.token_flops` FLOPs per row, at `linear_gflops`;
* attention work: the query-key pairs the method's kernel calls compute, summed over query
  heads, 4 * head_dim FLOPs per pair, at `attention_gflops`. A kernel that skips masked
  blocks (Triton, FlashAttention: `attention_pairs` "visible") computes the pairs visible
  under the method's mask (`HostWork.head_pairs`); the torch reference (the CPU path,
  `attention_pairs` "all") computes every query x key score of each call and masks after
  (`HostWork.head_rect_pairs`);
* compressor work: keys scored to choose passing blocks, per KV head, `compress_ns_per_key`;
* communication: bytes received over a link of `link_gb_per_s` plus `message_us` per message;
  ring schedules overlap it with attention (the larger of the two counts), the other methods
  wait for it.

A host's time is the sum over layers divided by its relative speed (`--host-speeds`). What a
host computes is described by a `HostWork`; each method builds its own (`Method.host_work`)
from the helpers below, so the counts follow the method's real attention pattern.

Coefficients (`CostCoefficients`) come from `longctx plan --calibrate` (saved to
`~/.cache/longctx/costs.json`, or `--costs FILE`) or from the defaults shipped per device type
in `longctx/data/costs.json`.
"""

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from longctx.errors import LongCtxError
from longctx.plan import check_speeds

SHIPPED_COSTS = Path(__file__).resolve().parent / "data" / "costs.json"
DEVICE_TYPES = ("cpu", "cuda")


def cache_costs_path():
    """Where `longctx plan --calibrate` saves coefficients: $XDG_CACHE_HOME (or ~/.cache)/longctx/costs.json."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "longctx" / "costs.json"


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


@dataclass(frozen=True)
class CostCoefficients:
    """Throughputs and latencies of one device type (see the module docstring for their use).

    `tile` is the kernel's row tile: balanced block boundaries are rounded to it.
    `attention_pairs`: "visible" when the attention kernel skips masked blocks, "all" when it
    computes every query x key score of a call (the torch reference).
    `source` says where the numbers come from (shipped defaults or a calibration).
    """

    device: str
    linear_gflops: float
    attention_gflops: float
    compress_ns_per_key: float
    link_gb_per_s: float
    message_us: float
    tile: int = 64
    source: str = "shipped"
    attention_pairs: str = "visible"

    def validate(self):
        """LongCtxError unless the rates are positive; returns self."""
        for name in ("linear_gflops", "attention_gflops", "link_gb_per_s"):
            if not getattr(self, name) > 0:
                raise LongCtxError(f"cost coefficients for {self.device}: {name} must be positive")
        if self.compress_ns_per_key < 0 or self.message_us < 0 or self.tile < 1:
            raise LongCtxError(f"cost coefficients for {self.device}: negative time or tile < 1")
        if self.attention_pairs not in ("visible", "all"):
            raise LongCtxError(f"cost coefficients for {self.device}: attention_pairs must be 'visible' or 'all'")
        return self

    @classmethod
    def from_dict(cls, device, values):
        """Coefficients from a JSON entry (unknown keys are ignored)."""
        known = {item.name for item in fields(cls)}
        try:
            return cls(**{"device": device, **{k: v for k, v in values.items() if k in known and k != "device"}})
        except TypeError as exc:
            raise LongCtxError(f"cost coefficients for {device} are incomplete: {exc}") from None

    def to_dict(self):
        """JSON-ready dict (without the device, which is the key in the file)."""
        values = asdict(self)
        values.pop("device")
        return values


def _read_costs_file(path):
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise LongCtxError(f"cannot read cost file {str(path)!r}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise LongCtxError(f"cost file {str(path)!r} is not JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise LongCtxError(f"cost file {str(path)!r} must hold an object keyed by device type")
    return data


def load_costs(device, path=None):
    """Coefficients for `device` ("cpu" or "cuda").

    `path` (--costs FILE) must exist and hold that device; without it the calibrated entry in
    `cache_costs_path()` is used when present, else the shipped default.
    """
    if device not in DEVICE_TYPES:
        raise LongCtxError(f"no cost model for device {device!r}; choose one of {', '.join(DEVICE_TYPES)}")
    if path:
        data = _read_costs_file(path)
        if device not in data:
            raise LongCtxError(f"cost file {str(path)!r} has no entry for {device!r}")
        return CostCoefficients.from_dict(device, data[device]).validate()
    cached = cache_costs_path()
    if cached.is_file():
        data = _read_costs_file(cached)
        if device in data:
            return CostCoefficients.from_dict(device, data[device]).validate()
    return CostCoefficients.from_dict(device, _read_costs_file(SHIPPED_COSTS)[device]).validate()


def save_costs(coeffs, path=None):
    """Write `coeffs` into the cost file (`path`, default `cache_costs_path()`), keeping other devices; returns the path."""
    path = Path(path) if path else cache_costs_path()
    data = _read_costs_file(path) if path.is_file() else {}
    data[coeffs.device] = coeffs.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def resolve_device_type(device):
    """'cpu' or 'cuda' for a RunConfig device ('auto' asks torch whether CUDA is available)."""
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def dtype_bytes(dtype, device_type):
    """Bytes per value for a RunConfig dtype ('auto': bfloat16 on CUDA, float32 on CPU)."""
    if dtype == "auto":
        return 2 if device_type == "cuda" else 4
    return 4 if dtype == "float32" else 2


# ---------------------------------------------------------------------------------------------
# What one host computes (per layer)


@dataclass(frozen=True)
class HostWork:
    """One host's work in one layer.

    rows: rows through projections and MLP; head_pairs: query-key pairs visible under the
    method's mask, summed over query heads; head_rect_pairs: query x key scores of every
    kernel call (q_len * k_len), summed over query heads; scored_keys: keys the compressor
    scores, summed over KV heads; recv_bytes and messages: what the host receives;
    overlapped: communication hides behind attention.
    """

    rows: int = 0
    head_pairs: int = 0
    head_rect_pairs: int = 0
    scored_keys: int = 0
    recv_bytes: int = 0
    messages: int = 0
    overlapped: bool = False


def span_causal_pairs(span):
    """Sum over the span's positions p of (p + 1): keys a causal query at p sees in the whole document."""
    count = len(span)
    return count * (span.start + 1) + span.step * count * (count - 1) // 2


def causal_pairs(spans):
    """Causal query-key pairs of all owned positions (any layout: contiguous, zigzag, striped)."""
    return sum(span_causal_pairs(span) for span in spans)


def triangle(count):
    """Pairs of causal attention within `count` rows: count * (count + 1) / 2."""
    return count * (count + 1) // 2


def prefix_rect_pairs(spans):
    """Scores of calls where each contiguous span's queries attend to every key before its end
    (sum of len * stop): all-gather's calls, and the ring's work items when every host's
    spans are contiguous (a block before a span is attended in full, the span itself causally)."""
    return sum(len(span) * span.stop for span in spans)


def striped_rect_pairs(q_spans, source_spans):
    """Scores of the ring's work items for striped spans (as `burst.blocks` pairs them):
    per key stripe a causal square of min(n_k, n_q - shift) rows and, below it, a full block."""
    total = 0
    for q_span in q_spans:
        n_q = len(q_span)
        for k_span in source_spans:
            n_k = len(k_span)
            shift = 1 if k_span.start > q_span.start else 0
            square = max(0, min(n_k, n_q - shift))
            total += square * square + max(0, n_q - shift - n_k) * n_k
    return total


def local_work(spans, shape):
    """Causal attention among the host's own tokens only (dense: one host holding everything)."""
    rows = sum(len(span) for span in spans)
    return HostWork(rows=rows, head_pairs=shape.heads * triangle(rows), head_rect_pairs=shape.heads * rows * rows)


def ring_work(spans, doc_len, world, shape, source_spans=()):
    """Ring / BurstAttention: causal pairs of the owned queries; every other block arrives once,
    overlapped. Striped spans need every host's spans (`source_spans`, flattened) to count scores."""
    rows = sum(len(span) for span in spans)
    striped = any(span.step != 1 for span in spans)
    rect = striped_rect_pairs(spans, source_spans) if striped else prefix_rect_pairs(spans)
    return HostWork(rows=rows, head_pairs=shape.heads * causal_pairs(spans), head_rect_pairs=shape.heads * rect,
                    recv_bytes=(doc_len - rows) * shape.kv_bytes, messages=world - 1, overlapped=True)


def allgather_work(spans, doc_len, world, shape):
    """All-gather CP: causal pairs of the owned queries; the whole K/V is gathered before attention."""
    rows = sum(len(span) for span in spans)
    return HostWork(rows=rows, head_pairs=shape.heads * causal_pairs(spans),
                    head_rect_pairs=shape.heads * prefix_rect_pairs(spans),
                    recv_bytes=(doc_len - rows) * shape.kv_bytes, messages=world - 1)


def ulysses_heads(shape, world, rank):
    """(query heads, KV heads) Ulysses rank `rank` attends for (as in `burst.ulysses.head_ranges`)."""
    per_rank = shape.heads // world if shape.heads >= world else 1
    group = shape.heads // shape.kv_heads
    q_lo = rank * per_rank
    kv_lo, kv_hi = q_lo // group, (q_lo + per_rank - 1) // group + 1
    return per_rank, kv_hi - kv_lo


def ulysses_work(rows, rank, doc_len, world, shape):
    """Ulysses: causal attention over the whole document for this rank's heads; three all-to-alls."""
    q_heads, kv_heads = ulysses_heads(shape, world, rank)
    value = shape.head_dim * shape.dtype_bytes
    others = doc_len - rows
    received = others * (q_heads + 2 * kv_heads) * value + rows * (shape.heads - q_heads) * value
    return HostWork(rows=rows, head_pairs=q_heads * triangle(doc_len), head_rect_pairs=q_heads * doc_len * doc_len,
                    recv_bytes=received, messages=3 * (world - 1))


def apb_pairs(anchor_len, probe_len, passing_len, rows):
    """Pairs per query head of one APB host (see `apb.method.APBAttention.prefill_attention`).

    Anchor rows see the anchor causally; probe rows see the probe causally; local rows see all
    of the passing block, all of the anchor (never a probe) and their block causally.
    """
    return triangle(anchor_len) + triangle(probe_len) + rows * (passing_len + anchor_len) + triangle(rows)


def apb_rect_pairs(anchor_len, probe_len, passing_len, rows):
    """Scores of one APB host's kernel calls: [anchor ; local] x [P ; anchor ; local] in one
    call, or a probe call (probe x probe) and a local call (local x [P ; local])."""
    return (anchor_len + rows) * (passing_len + anchor_len + rows) + probe_len * probe_len


def apb_work(host, world, max_sends, shape):
    """APB / Star host: lead + local rows, APB pairs, compressor scoring, the passing all-gather.

    The all-gather pads every host's block to the longest (`max_sends` keys per KV head), so
    each host receives (world - 1) padded blocks when anything is passed.
    """
    rows = host.num_tokens
    scored = rows * shape.kv_heads if host.selects else 0
    passing = max_sends > 0 and world > 1
    return HostWork(
        rows=host.lead_len + rows,
        head_pairs=shape.heads * apb_pairs(host.anchor_len, host.probe_len, host.passing_len, rows),
        head_rect_pairs=shape.heads * apb_rect_pairs(host.anchor_len, host.probe_len, host.passing_len, rows),
        scored_keys=scored,
        recv_bytes=(world - 1) * max_sends * shape.kv_bytes if passing else 0,
        messages=world - 1 if passing else 0,
    )


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

    def summary(self):
        """JSON-ready dict with rounded numbers."""
        return {key: round(value, 4) for key, value in asdict(self).items()}


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
        total = token + attention + compress + exposed
        return HostEstimate(token * layers, attention * layers, compress * layers, comm * layers, total * layers)

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
