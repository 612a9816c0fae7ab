"""First light on a GPU: is every attention backend right, how fast, and does an 8B-shaped prefill run.

    python benchmarks/gpu_first_light.py            # one H100/H200: about 5 minutes, no network
    python benchmarks/gpu_first_light.py --smoke    # the CPU (CI): Triton interpreter, tiny shapes, its timings mean nothing

Made to turn minutes of a lent GPU into a verdict. Prints progress with the elapsed time,
writes one JSON (`--out`, default benchmarks/results/gpu_first_light.json; smoke: a temporary
file) after every part, so a run cut short still leaves what it measured, and ends with a
verdict line; exits 1 when any result is wrong (or a part fails), 0 otherwise.

(a) **Correctness** of every backend present against the float32 reference
    (`reference_attention`) in bf16 at Llama-3.1-8B's head shape (32 query / 8 KV heads, head
    dim 128): the Triton kernel (with and, on sm_90, without TMA K/V loads), each of PyTorch's
    fused CUDA ops through longctx's mask split (flash, cuDNN, efficient), flash-attn when it
    imports, and `auto` as users get it. Calls: causal prefill at 1K and 32K, a non-causal
    ring step, a running state resumed over two key blocks (BurstAttention's LAO), the query
    pass and a decode step over 32K keys (the Triton kernel's split-K path), APB's anchor rule
    (anchor rows skip the passing prefix), ragged lengths with and without the causal mask.
    A backend passes a call when max |out - ref| <= 2e-2 and max |lse - ref| <= 1e-2 on rows
    that see keys, and the rows that see none are exactly out 0, lse -inf.
(b) **Speed**: causal prefill at 16K-128K tokens, TFLOP/s over the visible pairs of each
    backend beside SDPA's FlashAttention and cuDNN backends; one warm-up call (compilation and
    autotuning) outside the timing, then the median of `--repeats` (>= 3) timed calls, with
    the fastest and slowest shown.
(c) **End to end**: a Llama-3.1-8B-shaped model with random bf16 weights made on the GPU, one
    32K-token prefill: Hugging Face's SDPA forward and longctx dense measured, every method on
    8 simulated hosts (each host's work measured alone on this GPU, network modelled at
    `--gb-per-s`, `longctx.simulate`), each (method, length) warmed up once before it is
    timed; peak GPU memory of each.
"""

import argparse
import json
import os
import platform
import sys
import time


def parse_args(argv=None):
    """Command-line options (defaults: the GPU run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (CI)")
    parser.add_argument("--parts", nargs="+", default=["correctness", "speed", "prefill"],
                        choices=["correctness", "speed", "prefill"])
    parser.add_argument("--speed-lengths", type=int, nargs="+", default=[16384, 32768, 65536, 131072])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per speed measurement (>= 3)")
    parser.add_argument("--prefill-length", type=int, default=32768)
    parser.add_argument("--hosts", type=int, default=8, help="simulated hosts of part (c)")
    parser.add_argument("--prefill-repeats", type=int, default=1, help="timed runs per method after its warm-up")
    parser.add_argument("--gb-per-s", type=float, default=300.0, help="modelled link bandwidth per GPU")
    parser.add_argument("--latency-us", type=float, default=10.0)
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="skip a part (recorded as skipped) once this many seconds have passed")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (a median and a spread)")
    if args.smoke:
        args.speed_lengths, args.prefill_length, args.hosts = [64, 128], 256, 2
    return args


if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from longctx.kernels import attend_into, attention, merge  # noqa: E402
from longctx.kernels.calibration import time_calls  # noqa: E402
from longctx.kernels.dispatch import triton_available  # noqa: E402
from longctx.kernels.fused import fused_attention, op_named  # noqa: E402
from longctx.kernels.reference import reference_attention  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
OUT_TOL, LSE_TOL = 2e-2, 1e-2
# What `auto` runs without a calibration: these must run. The others (cuDNN, the efficient
# op in 16-bit, flash-attn, TMA) may be unavailable on a part or a version; they must only
# never be wrong.
REQUIRED = ("auto", "triton", "torch:cuda-flash", "torch:cpu-flash")


def head_shape(smoke):
    """(q_heads, kv_heads, head_dim, dtype) of parts (a) and (b)."""
    return (4, 2, 16, torch.float32) if smoke else (32, 8, 128, torch.bfloat16)


def correctness_calls(smoke):
    """(name, q_len, k_len, masks, key split for a resumed state or None) of part (a)."""
    unit = 32 if smoke else 1024
    long = 4 * unit if smoke else 32768
    return [
        ("causal prefill", unit, unit, dict(causal=True), None),
        ("causal prefill, long", long, long, dict(causal=True), None),
        ("ring step (non-causal)", 4 * unit, 4 * unit, dict(causal=False), None),
        ("resumed state over two key blocks", 4 * unit, 8 * unit, dict(causal=True), 4 * unit),
        ("query pass (32 rows)", 32, long, dict(causal=True), None),
        ("decode (split-K)", 1, long, dict(causal=True), None),
        ("apb anchor rule", unit + 4 * unit, 2 * unit + unit + 4 * unit,
         dict(causal=True, anchor_len=unit, prefix_len=2 * unit), None),
        ("ragged, causal", unit - 24, 3 * unit - 7, dict(causal=True), None),
        ("ragged, non-causal", unit - 24, 3 * unit - 7, dict(causal=False), None),
    ]


def backends(device):
    """{name: (fresh(q, k, v, masks) -> (out, lse), fold(out, lse, q, k, v, masks) or None)} of
    every backend present on `device`: Triton (and Triton with TMA on sm_90 / the interpreter),
    each fused op that runs here, flash-attn when it imports, and `auto`."""
    found = {"auto": (lambda q, k, v, m: attention(q, k, v, **m),
                      lambda o, s, q, k, v, m: attend_into(o, s, q, k, v, **m))}
    if triton_available() and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        from longctx.kernels.triton_attention import triton_attend_into, triton_attention

        found["triton"] = (lambda q, k, v, m: triton_attention(q, k, v, **m),
                           lambda o, s, q, k, v, m: triton_attend_into(o, s, q, k, v, **m))
        if device.type != "cuda" or torch.cuda.get_device_capability(device) >= (9, 0):
            found["triton+tma"] = (_with_tma(found["triton"][0]), _with_tma(found["triton"][1]))
    ops = ["cpu-flash"] if device.type == "cpu" else ["cuda-flash", "cuda-cudnn", "cuda-efficient"]
    try:
        op_named("flash-attn")
        ops += ["flash-attn"] if device.type == "cuda" else []
    except RuntimeError:
        pass
    for name in ops:
        op = op_named(name)
        fresh = (lambda op: lambda q, k, v, m: fused_attention(q, k, v, op=op, **m))(op)
        found[f"torch:{name}" if name != "flash-attn" else name] = (fresh, _merge_fold(fresh))
    return found


def _with_tma(fn):
    """`fn` run with LONGCTX_TRITON_TMA=1 (K/V through tensor descriptors)."""
    def run(*args):
        previous = os.environ.get("LONGCTX_TRITON_TMA")
        os.environ["LONGCTX_TRITON_TMA"] = "1"
        try:
            return fn(*args)
        finally:
            if previous is None:
                os.environ.pop("LONGCTX_TRITON_TMA")
            else:
                os.environ["LONGCTX_TRITON_TMA"] = previous
    return run


def _merge_fold(fresh):
    def fold(out, lse, q, k, v, masks):
        merged_out, merged_lse = merge(out, lse, *fresh(q, k, v, masks))
        out.copy_(merged_out)
        lse.copy_(merged_lse)
    return fold


def randn(shape, dtype, device, seed):
    """Seeded normal tensor made on `device`."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=gen, device=device, dtype=dtype)


def compare(out, lse, want_out, want_lse):
    """{max_abs_err, lse_max_abs_err, empty_rows_ok, ok} of (out, lse) against the reference."""
    empty = torch.isneginf(want_lse)
    empty_ok = bool(torch.equal(torch.isneginf(lse), empty) and (out[empty] == 0).all())
    seen = ~empty
    err = (out.float() - want_out.float()).abs().max().item() if out.numel() else 0.0
    lse_err = (lse[seen] - want_lse[seen]).abs().max().item() if seen.any() else 0.0
    return {"max_abs_err": err, "lse_max_abs_err": lse_err, "empty_rows_ok": empty_ok,
            "ok": err <= OUT_TOL and lse_err <= LSE_TOL and empty_ok}


def correctness(device, smoke, progress):
    """Part (a): rows of {call, backend, errors, ok} (or the backend's error)."""
    q_heads, kv_heads, head_dim, dtype = head_shape(smoke)
    found = backends(device)
    rows = []
    for index, (name, q_len, k_len, masks, split) in enumerate(correctness_calls(smoke)):
        progress(f"correctness: {name} ({q_len} x {k_len})")
        q = randn((1, q_heads, q_len, head_dim), dtype, device, 3 * index)
        k = randn((1, kv_heads, k_len, head_dim), dtype, device, 3 * index + 1)
        v = randn((1, kv_heads, k_len, head_dim), dtype, device, 3 * index + 2)
        want_out, want_lse = reference_attention(q.float(), k.float(), v.float(), **masks, chunk_scores=1 << 28)
        for backend, (fresh, fold) in found.items():
            row = {"call": name, "q_len": q_len, "k_len": k_len, **{key: value for key, value in masks.items()},
                   "resumed": split is not None, "backend": backend}
            try:
                if split is None:
                    out, lse = fresh(q, k, v, masks)
                else:
                    out = torch.zeros(q.shape, dtype=torch.float32, device=device)
                    lse = torch.full(q.shape[:3], float("-inf"), device=device)
                    fold(out, lse, q, k[:, :, :split], v[:, :, :split], {**masks, "causal": False})
                    fold(out, lse, q, k[:, :, split:], v[:, :, split:], masks)
                row.update(compare(out, lse, want_out, want_lse))
            except Exception as exc:  # noqa: BLE001 - a backend that fails is a result, recorded
                row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            rows.append(row)
        del q, k, v, want_out, want_lse
        _free(device)
    return rows


def speed(device, smoke, lengths, repeats, progress):
    """Part (b): per length, TFLOP/s (visible pairs) of every backend and of SDPA's flash and cuDNN."""
    from bench_kernel import attention_flops, sdpa_runner

    q_heads, kv_heads, head_dim, dtype = head_shape(smoke)
    found = backends(device)
    rows = []
    for length in lengths:
        q = randn((1, q_heads, length, head_dim), dtype, device, 1)
        k = randn((1, kv_heads, length, head_dim), dtype, device, 2)
        v = randn((1, kv_heads, length, head_dim), dtype, device, 3)
        flops = attention_flops(1, q_heads, length, length, head_dim, True)
        runners = {name: (lambda fresh=fresh, q=q, k=k, v=v: fresh(q, k, v, {"causal": True}))
                   for name, (fresh, _) in found.items()}
        if device.type == "cuda":
            from torch.nn.attention import SDPBackend

            for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
                try:
                    runners[name] = sdpa_runner(q, k, v, True, backend)[0]
                except RuntimeError as exc:
                    runners[name] = str(exc).splitlines()[0]
        row = {"length": length, "flops": flops, "backends": {}}
        for name, run in runners.items():
            progress(f"speed: {length} tokens, {name}")
            if not callable(run):
                row["backends"][name] = {"error": run}
                continue
            try:
                timing = time_calls(run, device, repeats)
            except Exception as exc:  # noqa: BLE001 - recorded, the part goes on
                row["backends"][name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
                continue
            row["backends"][name] = {**timing, "tflops": flops / (timing["median_ms"] * 1e-3) / 1e12,
                                     "tflops_min_max": [flops / (timing["max_ms"] * 1e-3) / 1e12,
                                                        flops / (timing["min_ms"] * 1e-3) / 1e12]}
        rows.append(row)
        del q, k, v, runners
        _free(device)
    return rows


def llama_model(device, smoke, max_positions):
    """A Llama-3.1-8B-shaped causal LM with random bfloat16 weights made on `device`, longctx
    attention set (smoke: a 2-layer float32 Llama); returns (model, shape dict, dtype name)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from longctx.models.attention import register_attention

    if smoke:
        shape = dict(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)
        dtype = torch.float32
    else:
        shape = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0)
        dtype = torch.bfloat16
    config = LlamaConfig(**shape, max_position_embeddings=max_positions, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.set_attn_implementation(register_attention())
    return model.eval(), shape, str(dtype).removeprefix("torch.")


def simulated_rows(model, length, host_counts, methods, link, repeats, progress, with_dense=True, deadline=None):
    """Rows of part (c) (and of gpu_suite's simulated part) at one document length: HF SDPA and
    longctx dense measured (when `with_dense`), each (method, hosts) simulated; every
    measurement warmed up once untimed, then `repeats` timed runs (median, runs listed); peak
    device memory of each. Row keys as `prefill_suite.run_simulated`'s, plus peak_memory_gb.
    Past `deadline` (a time.perf_counter() value) the remaining rows are mode "skipped"."""
    from longctx.baseline import HFSDPABaseline, speedup
    from prefill_suite import prompt, runs_on, simulate_method

    device = next(model.parameters()).device
    doc_ids, query_ids = prompt(model.config.vocab_size, length)
    measured = [("hf-sdpa", 1), ("dense", 1)] if with_dense else [("hf-sdpa", 1)]
    plan = measured + [(label, hosts) for hosts in host_counts for label in methods
                       if runs_on(model.config, label, hosts)]
    rows, hf_s = [], None
    baseline = HFSDPABaseline.of_model(model)
    for label, hosts in plan:
        if deadline is not None and time.perf_counter() > deadline:
            rows.append({"length": length, "method": label, "hosts": hosts, "mode": "skipped",
                         "error": "over the time budget"})
            continue
        progress(f"{length} tokens: {label} on {hosts} {'simulated host(s)' if label != 'hf-sdpa' else 'GPU'}")
        _reset_peak(device)
        try:
            if label == "hf-sdpa":
                timing = baseline.time(doc_ids, query_ids, repeats=repeats, warmup=True)
                seconds, details = timing.median_s, {"baseline": timing.to_dict()}
                hf_s = seconds
            else:
                simulate_method(model, label, doc_ids, query_ids, hosts, link, 1)  # warm-up
                seconds, details = simulate_method(model, label, doc_ids, query_ids, hosts, link, repeats)
        except Exception as exc:  # noqa: BLE001 - recorded; the verdict counts it
            rows.append({"length": length, "method": label, "hosts": hosts, "mode": "failed",
                         "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"})
            continue
        mode = "simulated" if hosts > 1 else "measured"
        rows.append({"length": length, "method": label, "hosts": hosts, "mode": mode, "seconds": seconds,
                     "speedup_vs_hf": speedup(hf_s, seconds) if hf_s else None,
                     "peak_memory_gb": _peak_gb(device), **details})
        _free(device)
    return rows


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device):
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _free(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


def verdict(report):
    """(passed, lines): no wrong result from any backend, no error from a REQUIRED one, no part
    or prefill row failed. Errors of optional backends are listed as unavailable, not failed."""
    problems = [f"part {name} failed: {error}" for name, error in report.get("failed_parts", {}).items()]
    for row in report.get("correctness", []):
        if "error" in row and row["backend"] not in REQUIRED:
            continue
        if not row["ok"]:
            detail = row.get("error") or (f"out err {row['max_abs_err']:.2e}, lse err {row['lse_max_abs_err']:.2e}, "
                                          f"empty rows {'ok' if row['empty_rows_ok'] else 'WRONG'}")
            problems.append(f"{row['backend']} wrong on {row['call']}: {detail}")
    for row in report.get("prefill", {}).get("rows", []):
        if row["mode"] == "failed":
            problems.append(f"prefill {row['method']} on {row['hosts']} host(s) failed: {row['error']}")
    return not problems, problems


def unavailable(report):
    """{optional backend: its first error} (not failures; see `verdict`)."""
    found = {}
    for row in report.get("correctness", []):
        if "error" in row and row["backend"] not in REQUIRED:
            found.setdefault(row["backend"], row["error"])
    return found


def start(script, smoke):
    """(device, start time, progress(text) printing the elapsed seconds) of a GPU script, or
    None after saying so when there is no GPU and `smoke` is off (smoke runs on the CPU)."""
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    if device.type == "cpu" and not smoke:
        print(f"{script} needs a CUDA GPU; run with --smoke to check it on the CPU.", file=sys.stderr)
        return None
    started = time.perf_counter()

    def progress(text):
        print(f"[{time.perf_counter() - started:7.1f} s] {text}", file=sys.stderr, flush=True)

    return device, started, progress


def main(args):
    """Run the parts, write the JSON after each, print the verdict; returns the exit status."""
    begun = start("gpu_first_light.py", args.smoke)
    if begun is None:
        return 2
    device, started, progress = begun

    out = args.out or (os.path.join(RESULTS, "gpu_first_light.json") if not args.smoke else
                       os.path.join(os.environ.get("TMPDIR", "/tmp"), "gpu_first_light_smoke.json"))
    report = {"benchmark": "gpu_first_light", "command": "python benchmarks/gpu_first_light.py " +
              " ".join(sys.argv[1:]), "smoke": args.smoke, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
              "versions": _versions(), "tolerances": {"out_max_abs": OUT_TOL, "lse_max_abs": LSE_TOL},
              "skipped_parts": {}, "failed_parts": {}}

    def part(name, fn):
        if name not in args.parts:
            return
        if time.perf_counter() - started > args.budget_s:
            report["skipped_parts"][name] = f"over the {args.budget_s:.0f} s budget"
            return
        try:
            report[name] = fn()
        except Exception as exc:  # noqa: BLE001 - a part that fails is a result; the next parts still run
            report["failed_parts"][name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:500]}"
        _write(out, report, started)

    part("correctness", lambda: correctness(device, args.smoke, progress))
    part("speed", lambda: speed(device, args.smoke, args.speed_lengths, args.repeats, progress))
    part("prefill", lambda: _prefill(device, args, progress, started + args.budget_s))
    passed, problems = verdict(report)
    report["verdict"] = {"passed": passed, "problems": problems, "unavailable": unavailable(report)}
    _write(out, report, started)
    _print_summary(report)
    print(f"wrote {out} in {report['wall_s']:.0f} s")
    print(("FIRST LIGHT: PASS" if passed else "FIRST LIGHT: FAIL") + f" ({len(report.get('correctness', []))} "
          f"correctness checks, {len(problems)} problems)")
    for problem in problems:
        print("  " + problem)
    for backend, error in report["verdict"]["unavailable"].items():
        print(f"  unavailable here (not a failure): {backend}: {error}")
    return 0 if passed else 1


def _prefill(device, args, progress, deadline):
    from prefill_suite import METHODS, Link

    link = Link(gb_per_s=args.gb_per_s, latency_us=args.latency_us)
    model, shape, dtype = llama_model(device, args.smoke, args.prefill_length + 1024)
    rows = simulated_rows(model, args.prefill_length, [args.hosts], list(METHODS), link, args.prefill_repeats,
                          progress, deadline=deadline)
    del model
    _free(device)
    return {"model": {**shape, "dtype": dtype, "weights": "random"}, "kernel_backend": "auto",
            "modelled": f"network: {args.gb_per_s:g} GB/s per GPU, {args.latency_us:g} us per message",
            "rows": rows}


def _versions():
    versions = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda}
    for name in ("triton", "transformers", "flash_attn"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return versions


def _write(path, report, started):
    report["wall_s"] = time.perf_counter() - started
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(report, handle, indent=1, default=float)


def _print_summary(report):
    for row in report.get("speed", []):
        cells = "  ".join(f"{name} {b['tflops']:.0f} [{b['tflops_min_max'][0]:.0f}-{b['tflops_min_max'][1]:.0f}]"
                          if "tflops" in b else f"{name} n/a" for name, b in row["backends"].items())
        print(f"speed S={row['length']:>6} TFLOP/s median [min-max]: {cells}")
    for row in report.get("prefill", {}).get("rows", []):
        if row["mode"] not in ("failed", "skipped"):
            print(f"prefill {row['length']} tokens {row['method']:<13} hosts {row['hosts']}  {row['seconds']:.3f} s"
                  f"  {row['speedup_vs_hf'] or 1:.2f}x HF  peak {row['peak_memory_gb'] or 0:.1f} GB")


if __name__ == "__main__":
    sys.exit(main(ARGS))
