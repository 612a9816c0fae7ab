"""Cost coefficients: throughputs and latencies of one device type, their files, and the device/dtype a run plans for.

`CostCoefficients` are what `longctx.costmodel.CostModel` turns work into milliseconds with.
They come from `longctx plan --calibrate` (`longctx.calibrate`, saved to
`~/.cache/longctx/costs.json`, or `--costs FILE`) or from the defaults shipped per device type
in `longctx/data/costs.json`.
"""

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from longctx.errors import LongCtxError

SHIPPED_COSTS = Path(__file__).resolve().parent / "data" / "costs.json"
DEVICE_TYPES = ("cpu", "cuda")


def cache_costs_path():
    """Where `longctx plan --calibrate` saves coefficients: $XDG_CACHE_HOME (or ~/.cache)/longctx/costs.json."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "longctx" / "costs.json"


@dataclass(frozen=True)
class CostCoefficients:
    """Throughputs and latencies of one device type (how they are used: `longctx.costmodel`).

    `tile` is the kernel's row tile: balanced block boundaries are rounded to it.
    `attention_pairs`: "visible" when the attention kernel skips masked blocks, "all" when it
    computes every query x key score of a call (the torch reference).
    `source` says where the numbers come from (shipped defaults or a calibration).
    `method` holds the coefficients methods add for work of their own (`Method.calibrate_costs`,
    read with `coefficient`); in the file they sit beside the others.
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
    method: dict = field(default_factory=dict)

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

    def coefficient(self, name, default):
        """The method coefficient `name` (calibrated), else `default`."""
        return self.method.get(name, default)

    def with_measured(self, **measured):
        """A copy with `measured` values: the fields of this class, and methods' own coefficients."""
        known = {item.name for item in fields(self)} - {"method"}
        own = {key: value for key, value in measured.items() if key not in known}
        return replace(self, **{key: value for key, value in measured.items() if key in known},
                       method={**self.method, **own})

    @classmethod
    def from_dict(cls, device, values):
        """Coefficients from a JSON entry; numbers under other keys are methods' coefficients."""
        known = {item.name for item in fields(cls)} - {"device", "method"}
        own = {key: value for key, value in values.items()
               if key not in known and key != "device" and isinstance(value, (int, float))}
        try:
            return cls(**{"device": device, **{k: v for k, v in values.items() if k in known}}, method=own)
        except TypeError as exc:
            raise LongCtxError(f"cost coefficients for {device} are incomplete: {exc}") from None

    def to_dict(self):
        """JSON-ready dict (without the device, which is the key in the file), methods'
        coefficients beside the others."""
        values = asdict(self)
        values.pop("device")
        own = values.pop("method")
        return {**values, **own}


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
