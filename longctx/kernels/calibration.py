"""Per-device kernel calibration: which kernel `auto` runs for each shape class of call on CUDA.

`longctx plan --calibrate --device cuda` calls `calibrate_kernels`: for the model's heads and
head dim, in the run's dtype, it times each candidate kernel (PyTorch's fused op that `auto`
uses by default, cuDNN's op for 16-bit, the Triton kernel when installed) on representative
calls of every shape class (`shape_class`: causal prefill, non-causal ring step, either folded
into a running state, APB's anchor rule, the query pass, decoding) at a few key lengths. A
candidate must first match the float32 reference on the class's shortest call (bf16/fp16
tolerance), else it is recorded with its error and never chosen. The fastest per (class,
length) is the entry's winner. Entries are saved per device name (`save_entries`) in
$XDG_CACHE_HOME/longctx/kernels.json (beside the cost coefficients), and `auto` reads those of
the device it runs on (`entries_for`), taking for a call the entry of its class with the
nearest key length (`winner`). Without entries `auto` keeps PyTorch's fused ops.
"""

import functools
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

QUERY_ROWS = 64  # calls with at most this many query rows are the query pass / decoding class
LENGTHS = (4096, 16384, 65536)


def kernels_path():
    """$XDG_CACHE_HOME (or ~/.cache)/longctx/kernels.json."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "longctx" / "kernels.json"


def shape_class(call):
    """The class of a `dispatch.CallShape` whose best kernel one measurement stands for: dtype,
    head dim, GQA group, mask kind (causal / full / apb), fresh or resumed, and prefill or
    query (<= QUERY_ROWS rows). Key lengths are matched separately (nearest)."""
    mask = "apb" if call.apb else ("causal" if call.causal else "full")
    return "/".join([str(call.dtype).removeprefix("torch."), f"d{call.head_dim}", f"g{call.q_heads // call.kv_heads}",
                     mask, "resumed" if call.resume else "fresh", "query" if call.q_len <= QUERY_ROWS else "prefill"])


def winner(entries, call):
    """The measured winner ("triton", "cuda-flash", "cuda-cudnn", ...) of `call`'s class at the
    nearest key length among `entries`, or None when its class was not measured."""
    key = shape_class(call)
    mine = [entry for entry in entries if entry["class"] == key and entry.get("winner")]
    if not mine:
        return None
    nearest = min(mine, key=lambda entry: abs(math.log2(max(1, entry["k_len"])) - math.log2(max(1, call.k_len))))
    return nearest["winner"]


def entries_for(device):
    """The calibration entries saved for CUDA `device`'s name (empty when none)."""
    return _entries_by_name(torch.cuda.get_device_name(device), str(kernels_path()))


@functools.lru_cache(maxsize=None)
def _entries_by_name(name, path):
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    return tuple((data.get(name) or {}).get("entries", ()))


def save_entries(device_name, entries, meta, path=None):
    """Write `entries` (and `meta`: versions, dtype, when) for `device_name` into the kernels
    file, keeping other devices; returns the path."""
    path = Path(path) if path else kernels_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        data = {}
    data[device_name] = {**meta, "entries": list(entries)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    _entries_by_name.cache_clear()
    return path


def representative_calls(length, q_heads, kv_heads, head_dim):
    """(name, q_len, k_len, masks, resume) of each shape class at key length `length`: what a
    host of an 8-host run asks for (a ring step over a block, APB's anchor + block over passing
    + anchor + block, the question's 32 rows, one decoded token)."""
    anchor, passing = length // 4, length // 2
    return [
        ("causal prefill", length, length, dict(causal=True), False),
        ("ring step (full)", length, length, dict(causal=False), True),
        ("ring diagonal step", length, length, dict(causal=True), True),
        ("apb anchor rule", anchor + length, passing + anchor + length,
         dict(causal=True, anchor_len=anchor, prefix_len=passing), False),
        ("query pass", 32, length, dict(causal=True), False),
        ("decode", 1, length, dict(causal=True), False),
    ]


def calibrate_kernels(q_heads, kv_heads, head_dim, dtype=torch.bfloat16, lengths=LENGTHS, repeats=5, progress=None,
                      device=None, candidates=None):
    """Measure every candidate kernel on every shape class (see the module docstring) on
    `device` (default: the current CUDA device); returns the entries (one per class and
    length: times in ms per candidate, the errors of those that failed, the winner).
    `candidates` default: the op `auto` uses by default ("default"), cuDNN's for 16-bit, and
    "triton" when it imports."""
    from longctx.kernels import dispatch

    device = device or torch.device("cuda", torch.cuda.current_device())
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    say = progress or (lambda text: None)
    if candidates is None:
        candidates = ["default"] + (["cuda-cudnn"] if dtype != torch.float32 else [])
        candidates += ["triton"] if dispatch.triton_available() else []
    failed, entries = {}, []
    for length in sorted(lengths):
        for name, q_len, k_len, masks, resume in representative_calls(length, q_heads, kv_heads, head_dim):
            q, k, v = _inputs(q_heads, kv_heads, q_len, k_len, head_dim, dtype, device)
            call = dispatch.CallShape(device.type, capability, dtype, q_heads, kv_heads, q_len, k_len, head_dim,
                                      head_dim, masks["causal"], "anchor_len" in masks, resume)
            default = dispatch.choose("torch", call).op or "reference"
            entry = {"class": shape_class(call), "call": name, "q_len": q_len, "k_len": k_len, "times_ms": {},
                     "errors": {}}
            for candidate in candidates:
                label = default if candidate == "default" else candidate
                if (entry["class"], label) in failed:
                    entry["errors"][label] = failed[(entry["class"], label)]
                    continue
                say(f"{name}, {k_len} keys: {label}")
                run = _runner(label, q, k, v, masks, resume)
                try:
                    if length == min(lengths):
                        _check(run, q, k, v, masks, resume)
                    entry["times_ms"][label] = time_calls(run, device, repeats)["median_ms"]
                except (RuntimeError, AssertionError) as exc:
                    failed[(entry["class"], label)] = entry["errors"][label] = str(exc).splitlines()[0][:300]
            if entry["times_ms"]:
                entry["winner"] = min(entry["times_ms"], key=entry["times_ms"].get)
            entries.append(entry)
            del q, k, v
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return entries


def calibrate_and_save(q_heads, kv_heads, head_dim, dtype=None, progress=None, path=None):
    """`calibrate_kernels` on the current CUDA device (dtype default bfloat16), saved for its
    name; returns (path, device name, entries). What `longctx plan --calibrate --device cuda` runs."""
    from longctx.kernels.dispatch import triton_available

    dtype = dtype or torch.bfloat16
    entries = calibrate_kernels(q_heads, kv_heads, head_dim, dtype, progress=progress)
    name = torch.cuda.get_device_name()
    meta = {"dtype": str(dtype).removeprefix("torch."), "heads": [q_heads, kv_heads, head_dim],
            "torch": torch.__version__, "triton": _triton_version() if triton_available() else None,
            "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    return save_entries(name, entries, meta, path), name, entries


def _triton_version():
    import triton

    return triton.__version__


def format_entries(entries):
    """One line per entry: the call, its keys, each candidate's milliseconds (or error) and the winner."""
    lines = []
    for entry in entries:
        times = "  ".join(f"{label} {ms:.3f} ms" for label, ms in entry["times_ms"].items())
        errors = "  ".join(f"{label} failed ({error})" for label, error in entry["errors"].items())
        lines.append(f"  {entry['call']:<20} {entry['k_len']:>7} keys  {times}  {errors}  -> {entry.get('winner')}")
    return "\n".join(lines)


def _inputs(q_heads, kv_heads, q_len, k_len, head_dim, dtype, device):
    gen = torch.Generator(device=device).manual_seed(q_len * 7 + k_len)
    return [torch.randn(1, heads, length, head_dim, generator=gen, device=device, dtype=dtype)
            for heads, length in ((q_heads, q_len), (kv_heads, k_len), (kv_heads, k_len))]


def _runner(label, q, k, v, masks, resume):
    """A zero-argument callable computing (out, lse) of the call with kernel `label` (a fused
    op's name or "triton"); resumed calls fold into a running state as `attend_into` does."""
    from longctx.kernels import merge
    from longctx.kernels.fused import fused_attention, op_named

    if label == "triton":
        from longctx.kernels.triton_attention import triton_attend_into, triton_attention

        if not resume:
            return lambda: triton_attention(q, k, v, **masks)
        state = _state(q)

        def fold():
            out, lse = state[0].clone(), state[1].clone()
            triton_attend_into(out, lse, q, k, v, **masks)
            return out, lse
        return fold
    op = op_named(label) if label != "reference" else None
    if op is None:
        from longctx.kernels.reference import reference_attention

        fresh = functools.partial(reference_attention, q, k, v, **masks)
        return (lambda: merge(*_state(q), *fresh())) if resume else fresh
    if not resume:
        return lambda: fused_attention(q, k, v, op=op, **masks)
    state = _state(q)
    return lambda: merge(*state, *fused_attention(q, k, v, op=op, **masks))


def _state(q):
    """A running state as a previous ring step leaves it: float32 out, finite lse."""
    gen = torch.Generator(device=q.device).manual_seed(1)
    out = torch.randn(q.shape, generator=gen, device=q.device) * 0.1
    return out, torch.randn(q.shape[:3], generator=gen, device=q.device)


def _check(run, q, k, v, masks, resume):
    """AssertionError unless `run`'s out matches the float32 reference (resumed runs: the
    merge of the same running state with the reference's result)."""
    from longctx.kernels import merge
    from longctx.kernels.reference import reference_attention

    out, lse = run()
    want_out, want_lse = reference_attention(q.float(), k.float(), v.float(), **masks)
    if resume:
        want_out, want_lse = merge(*_state(q), want_out, want_lse)
    error = (out.float() - want_out.float()).abs().max().item()
    if not error <= 2e-2:
        raise AssertionError(f"max abs error {error:.3g} against the float32 reference")


def time_calls(fn, device, repeats):
    """One untimed warm-up call of `fn` (compilation and autotuning stay outside the timing),
    then `repeats` timed calls, each synchronised on CUDA: {median_ms, min_ms, max_ms, runs_ms}."""
    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    synchronize()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        runs.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(runs), "min_ms": min(runs), "max_ms": max(runs), "runs_ms": runs}


__all__ = ["time_calls", "calibrate_kernels", "calibrate_and_save", "format_entries", "shape_class", "winner", "entries_for",
           "save_entries", "kernels_path"]
