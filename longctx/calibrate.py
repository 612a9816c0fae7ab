"""Measure the cost model's coefficients on this device with the real kernels (`longctx plan --calibrate`).

Times, for a few sizes each, on the current device and dtype:

* a linear layer of the model's width (hidden -> intermediate): token work, GFLOP/s;
* `longctx.kernels.attention` (causal, the model's heads / KV heads / head dim): attention
  work, GFLOP/s over the visible query-key pairs (the Triton kernel and the fused CPU path
  compute no score their mask hides);
* whatever the registered methods, and the plug-ins named, measure for their own work
  (`Method.calibrate_costs`, e.g. the cost of choosing the keys to pass: ns per key and KV
  head; a coefficient the core does not know is kept as the method's own,
  `CostCoefficients.coefficient`);

and fits time = a + b * work by least squares (rate = 1 / b; the fixed cost a is the same on
every host and does not move the balance). The link bandwidth and message latency cannot be
measured from one device: they are kept from the current coefficients unless given.
"""

import statistics
import time
from dataclasses import dataclass

import torch

from longctx.costs import CostCoefficients, load_costs, resolve_device_type
from longctx.kernels import attention
from longctx.registry import method_class, method_names

SIZES = {"cpu": (256, 512, 1024), "cuda": (2048, 4096, 8192)}


def _timed(fn, device, repeats):
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass
class Bench:
    """What a method's `calibrate_costs` measures with: the model shape, the token counts to
    time, seeded random tensors on the device (`rand`), a timer (`time`) and `say(text)`."""

    shape: object
    sizes: tuple
    device: torch.device
    dtype: torch.dtype
    repeats: int
    say: object
    generator: torch.Generator

    def rand(self, *dims):
        """Standard normal tensor of `dims` on the device, in the dtype (from the seeded generator)."""
        return torch.randn(*dims, generator=self.generator).to(self.device, self.dtype)

    def time(self, fn):
        """Median seconds of `repeats` calls of `fn` after one warm-up call."""
        return _timed(fn, self.device, self.repeats)


def fit_rate(work, seconds):
    """Work per second from (work, seconds) samples: 1 / slope of a least-squares line, or the
    ratio of totals when the slope is not positive (noisy timings)."""
    if len(work) > 1:
        mean_w, mean_s = statistics.fmean(work), statistics.fmean(seconds)
        var = sum((w - mean_w) ** 2 for w in work)
        slope = sum((w - mean_w) * (s - mean_s) for w, s in zip(work, seconds)) / var if var else 0.0
        if slope > 0:
            return 1.0 / slope
    return sum(work) / sum(seconds)


def calibrate(shape, device="auto", dtype=None, sizes=None, repeats=3, link_gb_per_s=None, message_us=None,
              base=None, progress=None, methods=()):
    """Measured `CostCoefficients` for `device` ("auto", "cpu", "cuda") and a `ModelShape`.

    `dtype` defaults to bfloat16 on CUDA and float32 on CPU; `sizes` are the token counts to
    time; `base` (default: the current coefficients of the device) supplies the link
    bandwidth, message latency and tile unless `link_gb_per_s` / `message_us` are given.
    `progress(text)` is called before each measurement when given. `methods` names plug-in
    methods to calibrate beside the registered ones.
    """
    kind = resolve_device_type(device)
    torch_device = torch.device(kind)
    dtype = dtype or (torch.bfloat16 if kind == "cuda" else torch.float32)
    sizes = tuple(sizes or SIZES[kind])
    base = base or load_costs(kind)
    bench = Bench(shape, sizes, torch_device, dtype, repeats, progress or (lambda text: None),
                  torch.Generator(device="cpu").manual_seed(0))

    bench.say("linear layer")
    weight = bench.rand(shape.intermediate, shape.hidden)
    linear_work, linear_s = [], []
    for n in sizes:
        x = bench.rand(n, shape.hidden)
        linear_work.append(2.0 * n * shape.hidden * shape.intermediate)
        linear_s.append(bench.time(lambda: torch.nn.functional.linear(x, weight)))

    bench.say("attention kernel")
    attn_work, attn_s = [], []
    for n in sizes:
        q = bench.rand(1, shape.heads, n, shape.head_dim)
        k, v = bench.rand(1, shape.kv_heads, n, shape.head_dim), bench.rand(1, shape.kv_heads, n, shape.head_dim)
        pairs = n * (n + 1) // 2
        attn_work.append(float(shape.heads * pairs * shape.pair_flops))
        attn_s.append(bench.time(lambda: attention(q, k, v, causal=True)))

    measured = {}
    for calibrate_costs in method_calibrations(methods):
        measured.update(calibrate_costs(bench))

    name = torch.cuda.get_device_name(torch_device) if kind == "cuda" else f"{torch.get_num_threads()} CPU threads"
    return base.with_measured(
        device=kind,
        linear_gflops=round(fit_rate(linear_work, linear_s) / 1e9, 3),
        attention_gflops=round(fit_rate(attn_work, attn_s) / 1e9, 3),
        attention_pairs="visible",
        link_gb_per_s=link_gb_per_s if link_gb_per_s is not None else base.link_gb_per_s,
        message_us=message_us if message_us is not None else base.message_us,
        source=f"calibrated on {name}, {str(dtype).replace('torch.', '')}, sizes {list(sizes)}, "
               f"{time.strftime('%Y-%m-%d')}",
        **measured,
    ).validate()


def method_calibrations(extra=()):
    """Each distinct `calibrate_costs` of the registered methods, then of the plug-in methods
    named in `extra` (a subclass that does not override it measures nothing more), in order."""
    seen = {}
    for name in dict.fromkeys([*method_names(), *(name for name in extra if ":" in name)]):
        calibrate_costs = method_class(name).calibrate_costs
        seen.setdefault(getattr(calibrate_costs, "__func__", calibrate_costs), calibrate_costs)
    return list(seen.values())


__all__ = ["calibrate", "fit_rate", "CostCoefficients"]
