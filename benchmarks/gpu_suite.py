"""The GPU suite: every attention backend against torch SDPA, and every method's simulated prefill.

    python benchmarks/gpu_suite.py             # one H200 (torch 2.11, Triton 3.6): < 10 minutes
    python benchmarks/gpu_suite.py --smoke     # the CPU (CI): Triton interpreter, tiny shapes, seconds

The longer sibling of `gpu_first_light.py` (which it shares its backends, timing and model
with); run that first on a new GPU.

1. **Kernel** (measured): bf16, 32 query / 8 KV heads, head dim 128, causal, 16K-128K tokens.
   Each backend's output is checked against SDPA on the device first, then the TFLOP/s
   (visible query-key pairs only) of every backend (Triton, Triton with TMA on sm_90,
   PyTorch's fused ops through longctx's split, flash-attn when installed, `auto`), SDPA's
   FlashAttention backend and SDPA's cuDNN backend are timed side by side: one warm-up call
   (compilation, autotuning) outside the timing, then the median of `--repeats` calls, with
   the fastest and slowest.
2. **Shaped calls** (measured): the APB call of the last of 8 hosts at 128K (queries: anchor
   4K + block 16K; keys: 7 x 2K passing + anchor + block; anchor rows skip the passing keys),
   and the query-pass / decoding calls (32 and 1 question tokens over 128K cached keys, the
   Triton kernel's split-K path), each backend checked against the torch reference and timed
   the same way; SDPA is timed on the nearest call it can express (non-causal), labelled so.
3. **Simulated 8 hosts**: a Llama-3.1-8B-shaped model with random bf16 weights made on the
   GPU, 32K/64K/128K document tokens, every method's per-host work measured on the GPU one
   host at a time, network modelled (default 300 GB/s per GPU, 10 us per message,
   NVLink-class), each against HF SDPA's forward measured in the same run; every (method,
   length) warmed up once before its `--repeats` timed runs; peak GPU memory of each.

`--smoke` runs every part on the CPU with tiny shapes (kernel under TRITON_INTERPRET=1, a
2-layer model, 256 tokens, 2 hosts) so CI proves the script works; its timings mean nothing.
Writes JSON (and a PNG of part 3) to `--out`.
"""

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    """Command-line options (defaults: the full GPU run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (CI)")
    parser.add_argument("--kernel-lengths", type=int, nargs="+", default=[16384, 32768, 65536, 131072])
    parser.add_argument("--grid", nargs="+", default=["32768:8", "65536:8", "131072:8"],
                        help="simulated prefill: LENGTH:HOSTS,... (document tokens, host counts)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement after a warm-up (>= 3)")
    parser.add_argument("--gb-per-s", type=float, default=300.0, help="modelled link bandwidth per GPU")
    parser.add_argument("--latency-us", type=float, default=10.0)
    parser.add_argument("--skip", nargs="*", default=[], choices=("kernel", "shaped", "simulated"))
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_suite.json; "
                                                    "smoke: a temporary file)")
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (a median and a spread)")
    if args.smoke:
        args.kernel_lengths, args.grid = [64, 96], ["256:2"]
    return args


ARGS = parse_args()
if ARGS.smoke:
    # The interpreter must be chosen before anything imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import prefill_suite  # noqa: E402
from bench_kernel import attention_flops, sdpa_runner  # noqa: E402
from gpu_first_light import (_versions, backends, compare, head_shape, llama_model, randn,  # noqa: E402
                             simulated_rows, start)
from longctx.kernels import reference_attention  # noqa: E402
from longctx.kernels.calibration import time_calls  # noqa: E402
from prefill_suite import Link  # noqa: E402

GRID = prefill_suite.parse_grid(ARGS.grid)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def sdpa_runners(q, k, v, causal, device):
    """{name: zero-argument callable, or the error} of torch SDPA backends (GPU only)."""
    if device.type != "cuda":
        return {}
    from torch.nn.attention import SDPBackend

    runners = {}
    for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            runners[name] = sdpa_runner(q, k, v, causal, backend)[0]
        except RuntimeError as exc:
            runners[name] = str(exc).splitlines()[0]
    return runners


def time_backends(runners, device, flops, kv_bytes=None):
    """{name: timing (median / min / max ms, TFLOP/s, KV GB/s) or {"error"}} of zero-argument runners."""
    cells = {}
    for name, run in runners.items():
        if not callable(run):
            cells[name] = {"error": run}
            continue
        try:
            timing = time_calls(run, device, ARGS.repeats)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run this call: recorded
            cells[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            continue
        seconds = timing["median_ms"] * 1e-3
        cells[name] = {**timing, "tflops": flops / seconds / 1e12 if flops else None}
        if kv_bytes:
            cells[name]["kv_gb_per_s"] = kv_bytes / seconds / 1e9
    return cells


def kernel_rows(lengths, device, smoke):
    """Part 1: each backend's error against SDPA (GPU) or the reference (CPU), then TFLOP/s side by side."""
    q_heads, kv_heads, head_dim, dtype = head_shape(smoke)
    rows = []
    for length in lengths:
        q = randn((1, q_heads, length, head_dim), dtype, device, 1)
        k = randn((1, kv_heads, length, head_dim), dtype, device, 2)
        v = randn((1, kv_heads, length, head_dim), dtype, device, 3)
        ours = {name: (lambda fresh=fresh, q=q, k=k, v=v: fresh(q, k, v, {"causal": True})) for name, (fresh, _) in
                backends(device).items()}
        sdpa = sdpa_runners(q, k, v, True, device)
        check_name = next((name for name, fn in sdpa.items() if callable(fn)), None)
        expected = sdpa[check_name]() if check_name else reference_attention(q, k, v, causal=True)[0]
        row = {"length": length, "checked_against": check_name or "reference", "max_abs_err": {}}
        for name, run in ours.items():
            row["max_abs_err"][name] = (run()[0].float() - expected.float()).abs().max().item()
        del expected
        row["backends"] = time_backends({**ours, **sdpa}, device, attention_flops(1, q_heads, length, length,
                                                                                  head_dim, True))
        rows.append(row)
        del q, k, v
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def shaped_rows(device, smoke):
    """Part 2: the APB call of the last of 8 hosts at 128K and the query-pass / decoding calls."""
    q_heads, kv_heads, head_dim, dtype = head_shape(smoke)
    scale = 1 / 512 if smoke else 1
    block, anchor, passing = int(16384 * scale), int(4096 * scale), int(7 * 2048 * scale)
    context = int(131072 * scale)
    calls = [
        ("apb last host (8 hosts, 128K)", anchor + block, passing + anchor + block, True, anchor, passing),
        ("query pass: 32 tokens over 128K", 32, context + 32, True, 0, 0),
        ("decode: 1 token over 128K", 1, context + 1, True, 0, 0),
    ]
    rows = []
    for name, q_len, k_len, causal, anchor_len, prefix_len in calls:
        q = randn((1, q_heads, q_len, head_dim), dtype, device, 4)
        k = randn((1, kv_heads, k_len, head_dim), dtype, device, 5)
        v = randn((1, kv_heads, k_len, head_dim), dtype, device, 6)
        masks = dict(causal=causal, anchor_len=anchor_len, prefix_len=prefix_len)
        ref_out, ref_lse = reference_attention(q.float(), k.float(), v.float(), **masks, chunk_scores=1 << 28)
        ours = {}
        row = {"call": name, "q_len": q_len, "k_len": k_len, "anchor_len": anchor_len, "prefix_len": prefix_len,
               "errors_vs_reference": {}}
        for backend, (fresh, _) in backends(device).items():
            ours[backend] = (lambda fresh=fresh: fresh(q, k, v, masks))
            row["errors_vs_reference"][backend] = compare(*ours[backend](), ref_out, ref_lse)
        del ref_out, ref_lse
        kv_bytes = 2 * k.numel() * k.element_size()
        flops = attention_flops(1, q_heads, q_len, k_len, head_dim, causal) if not anchor_len else None
        row["backends"] = time_backends(ours, device, flops, kv_bytes)
        if not anchor_len:  # SDPA cannot express the APB rule; for the others, its non-causal call
            sdpa = {f"{name} (non-causal)": run for name, run in sdpa_runners(q, k, v, False, device).items()}
            row["backends"].update(time_backends(sdpa, device, None, kv_bytes))
        rows.append(row)
    return rows


def main():
    """Run the parts, print a summary, write JSON (+ PNG)."""
    begun = start("gpu_suite.py", ARGS.smoke)
    if begun is None:
        return 2
    device, started, progress = begun

    report = {
        "benchmark": "gpu_suite",
        "command": "python benchmarks/gpu_suite.py " + " ".join(sys.argv[1:]),
        "smoke": ARGS.smoke,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "versions": _versions(),
        "repeats": ARGS.repeats,
        "measured": "kernel and SDPA times (one warm-up, then the median of the repeats, min and max) and errors; "
                    "HF SDPA and longctx dense prefill; every simulated host's compute, alone on the device",
    }
    if "kernel" not in ARGS.skip:
        progress("part 1: kernels vs SDPA")
        report["kernel"] = kernel_rows(ARGS.kernel_lengths, device, ARGS.smoke)
        for row in report["kernel"]:
            cells = "  ".join(f"{name} {b['tflops']:.0f} TFLOP/s" if b.get("tflops") else f"{name} n/a"
                              for name, b in row["backends"].items())
            worst = max(row["max_abs_err"].values())
            print(f"kernel S={row['length']:>6}  worst err {worst:.1e} vs {row['checked_against']}  {cells}")
    if "shaped" not in ARGS.skip:
        progress("part 2: APB-shaped and decode-shaped calls")
        report["shaped"] = shaped_rows(device, ARGS.smoke)
        for row in report["shaped"]:
            cells = "  ".join(f"{name} {b['median_ms']:.3f} ms" for name, b in row["backends"].items()
                              if "median_ms" in b)
            worst = max(e["max_abs_err"] for e in row["errors_vs_reference"].values())
            print(f"{row['call']:<34} worst err {worst:.1e}  {cells}")
    if "simulated" not in ARGS.skip:
        progress("part 3: simulated hosts")
        link = Link(gb_per_s=ARGS.gb_per_s, latency_us=ARGS.latency_us)
        model, shape, dtype = llama_model(device, ARGS.smoke, max(length for length, _ in GRID) + 1024)
        rows = []
        for length, host_counts in GRID:
            rows += simulated_rows(model, length, host_counts, list(prefill_suite.METHODS), link, ARGS.repeats,
                                   progress)
        report["simulated"] = {"model": {**shape, "dtype": dtype, "weights": "random"},
                               "modelled": f"network: {prefill_suite.link_description(link)}; hosts meet at "
                                           f"every layer with communication",
                               "rows": rows}
        prefill_suite.print_table([row for row in rows if row["mode"] not in ("failed", "skipped")], "simulated")
    report["wall_s"] = time.perf_counter() - started
    out = ARGS.out or (os.path.join(RESULTS, "gpu_suite.json") if not ARGS.smoke else
                       os.path.join(os.environ.get("TMPDIR", "/tmp"), "gpu_suite_smoke.json"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as handle:
        json.dump(report, handle, indent=1, default=float)
    if "simulated" in report:
        prefill_suite.plot([row for row in report["simulated"]["rows"] if row["mode"] not in ("failed", "skipped")],
                           os.path.splitext(out)[0] + ".png",
                           f"{report['device']}: simulated hosts, {report['simulated']['modelled']}")
    print(f"wrote {out} in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
