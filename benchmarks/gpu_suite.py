"""The GPU suite: the Triton kernel against torch SDPA, and every method's simulated prefill.

    python benchmarks/gpu_suite.py             # one H200 (torch 2.11, Triton 3.6): < 8 minutes
    python benchmarks/gpu_suite.py --smoke     # the CPU (CI): Triton interpreter, tiny shapes, seconds

1. **Kernel** (measured): bf16, 32 query / 8 KV heads, head dim 128, causal, 16K-128K tokens.
   The kernel's output is checked against SDPA on the device first, then the TFLOP/s (visible
   query-key pairs only) of the kernel, SDPA's FlashAttention backend and SDPA's cuDNN backend
   are timed side by side (`triton.testing.do_bench`, median).
2. **Shaped calls** (measured): the APB call of the last of 8 hosts at 128K (queries: anchor
   4K + block 16K; keys: 7 x 2K passing + anchor + block; anchor rows skip the passing keys),
   and the query-pass / decoding calls (32 and 1 question tokens over 128K cached keys, the
   split-K path), each checked against the torch reference and timed; SDPA is timed on the
   nearest call it can express (non-causal), labelled as such.
3. **Simulated 8 hosts** (`prefill_suite`): a Llama-3.1-8B-shaped model with random bf16
   weights made on the GPU, 32K/64K/128K document tokens, every method's per-host work
   measured on the GPU one host at a time, network modelled (default 300 GB/s per GPU,
   10 us per message, NVLink-class), each against HF SDPA's forward measured in the same run.

`--smoke` runs every part on the CPU with tiny shapes (kernel under TRITON_INTERPRET=1, a
2-layer model, 256 tokens, 2 hosts) so CI proves the script works; its timings mean nothing.
Writes JSON (and a PNG of part 3) to `--out`.
"""

import argparse
import json
import math
import os
import platform
import sys
import time


def parse_args(argv=None):
    """Command-line options (defaults: the full GPU run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (CI)")
    parser.add_argument("--kernel-lengths", type=int, nargs="+", default=[16384, 32768, 65536, 131072])
    parser.add_argument("--grid", nargs="+", default=["32768:8", "65536:8", "131072:8"],
                        help="simulated prefill: LENGTH:HOSTS,... (document tokens, host counts)")
    parser.add_argument("--gb-per-s", type=float, default=300.0, help="modelled link bandwidth per GPU")
    parser.add_argument("--latency-us", type=float, default=10.0)
    parser.add_argument("--skip", nargs="*", default=[], choices=("kernel", "shaped", "simulated"))
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_suite.json; "
                                                    "smoke: a temporary file)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.kernel_lengths, args.grid = [96, 160], ["256:2"]
    return args


ARGS = parse_args()
if ARGS.smoke:
    # The interpreter must be chosen before anything imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import prefill_suite  # noqa: E402
from longctx.kernels import attention, reference_attention  # noqa: E402
from longctx.models.attention import register_attention  # noqa: E402
from prefill_suite import Link  # noqa: E402

GRID = prefill_suite.parse_grid(ARGS.grid)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def shapes(smoke):
    """Head layout and dtype of the kernel parts: (q_heads, kv_heads, head_dim, dtype)."""
    if smoke:
        return 4, 2, 32, torch.float32
    return 32, 8, 128, torch.bfloat16


def visible_pairs(q_len, k_len, causal, anchor_len=0, prefix_len=0):
    """Query-key pairs the mask shows (bottom-right causal; rows < anchor_len skip keys < prefix_len)."""
    total = 0
    for row in range(q_len):
        hi = min(k_len, row + k_len - q_len + 1) if causal else k_len
        lo = min(prefix_len, k_len) if row < anchor_len else 0
        total += max(0, hi - lo)
    return total


def timed_ms(fn, device):
    """Median milliseconds of `fn`: triton.testing.do_bench on CUDA, a perf_counter loop on the CPU."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[1]


def randn(shape, dtype, device, seed):
    """Seeded normal tensor."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=gen, device=device, dtype=dtype)


def sdpa_runners(q, k, v, causal, device):
    """{name: zero-argument callable} of torch SDPA backends that run this call (GPU only)."""
    if device.type != "cuda":
        return {}
    from bench_kernel import sdpa_runner
    from torch.nn.attention import SDPBackend

    runners = {}
    for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            runners[name] = sdpa_runner(q, k, v, causal, backend)[0]
        except RuntimeError as exc:
            runners[name] = str(exc).splitlines()[0]
    return runners


def kernel_rows(lengths, device, smoke):
    """Part 1: correctness against SDPA (GPU) or the reference (CPU), then TFLOP/s side by side."""
    q_heads, kv_heads, head_dim, dtype = shapes(smoke)
    rows = []
    for length in lengths:
        q = randn((1, q_heads, length, head_dim), dtype, device, 1)
        k = randn((1, kv_heads, length, head_dim), dtype, device, 2)
        v = randn((1, kv_heads, length, head_dim), dtype, device, 3)
        flops = 4.0 * q_heads * visible_pairs(length, length, True) * head_dim
        ours = lambda: attention(q, k, v, causal=True, backend="triton")  # noqa: E731
        out, _ = ours()
        runners = sdpa_runners(q, k, v, True, device)
        if device.type == "cuda":
            check_name = next((name for name, fn in runners.items() if callable(fn)), None)
            expected = runners[check_name]() if check_name else None
        else:
            check_name, expected = "reference", reference_attention(q, k, v, causal=True)[0]
        row = {"length": length, "checked_against": check_name,
               "max_abs_err": None if expected is None else (out.float() - expected.float()).abs().max().item(),
               "backends": {}}
        del out, expected
        for name, fn in [("triton", ours)] + list(runners.items()):
            if not callable(fn):
                row["backends"][name] = {"error": fn}
                continue
            ms = timed_ms(fn, device)
            row["backends"][name] = {"ms": ms, "tflops": flops / (ms * 1e-3) / 1e12}
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def shaped_rows(device, smoke):
    """Part 2: the APB call of the last of 8 hosts at 128K and the query-pass / decoding calls."""
    q_heads, kv_heads, head_dim, dtype = shapes(smoke)
    scale = 1 / 256 if smoke else 1
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
        ours = lambda: attention(q, k, v, backend="triton", **masks)  # noqa: E731
        out, lse = ours()
        ref_out, ref_lse = reference_attention(q, k, v, **masks)
        pairs = visible_pairs(q_len, k_len, causal, anchor_len, prefix_len)
        row = {"call": name, "q_len": q_len, "k_len": k_len, "anchor_len": anchor_len, "prefix_len": prefix_len,
               "max_abs_err_vs_reference": (out.float() - ref_out.float()).abs().max().item(),
               "lse_max_abs_err": (lse - ref_lse).nan_to_num(0.0).abs().max().item(), "backends": {}}
        del out, lse, ref_out, ref_lse
        ms = timed_ms(ours, device)
        kv_bytes = 2 * k.numel() * k.element_size()
        row["backends"]["triton"] = {"ms": ms, "tflops": 4.0 * q_heads * pairs * head_dim / (ms * 1e-3) / 1e12,
                                     "kv_gb_per_s": kv_bytes / (ms * 1e-3) / 1e9}
        if not anchor_len:  # SDPA cannot express the APB rule; for the others, its non-causal call
            for sdpa_name, fn in sdpa_runners(q, k, v, False, device).items():
                if callable(fn):
                    sdpa_ms = timed_ms(fn, device)
                    row["backends"][f"{sdpa_name} (non-causal)"] = {
                        "ms": sdpa_ms, "kv_gb_per_s": kv_bytes / (sdpa_ms * 1e-3) / 1e9}
        rows.append(row)
    return rows


def build_model(device, smoke):
    """The simulated part's model with random weights, made in memory on `device`, longctx
    attention set: Llama-3.1-8B's shape in bfloat16 (smoke: a 2-layer float32 Llama)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if smoke:
        shape = dict(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)
        dtype = torch.float32
    else:
        shape = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0)
        dtype = torch.bfloat16
    config = LlamaConfig(**shape, max_position_embeddings=max(length for length, _ in GRID) + 1024, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.set_attn_implementation(register_attention())
    return model.eval(), shape, str(dtype).removeprefix("torch.")


def main():
    """Run the parts, print a summary, write JSON (+ PNG)."""
    device = torch.device("cuda" if torch.cuda.is_available() and not ARGS.smoke else "cpu")
    if device.type == "cpu" and not ARGS.smoke:
        print("gpu_suite.py needs a CUDA GPU; run with --smoke to check it on the CPU.", file=sys.stderr)
        return 2
    started = time.perf_counter()

    def progress(text):
        print(f"[{time.perf_counter() - started:7.1f} s] {text}", file=sys.stderr, flush=True)

    import triton

    report = {
        "benchmark": "gpu_suite",
        "command": "python benchmarks/gpu_suite.py " + " ".join(sys.argv[1:]),
        "smoke": ARGS.smoke,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version()},
        "measured": "kernel and SDPA times and errors; HF SDPA and longctx dense prefill; every simulated "
                    "host's compute, alone on the device",
    }
    if "kernel" not in ARGS.skip:
        progress("part 1: kernel vs SDPA")
        report["kernel"] = kernel_rows(ARGS.kernel_lengths, device, ARGS.smoke)
        for row in report["kernel"]:
            cells = "  ".join(f"{name} {b['tflops']:.0f} TFLOP/s" if "tflops" in b else f"{name} n/a"
                              for name, b in row["backends"].items())
            print(f"kernel S={row['length']:>6}  err {row['max_abs_err']:.1e} vs {row['checked_against']}  {cells}")
    if "shaped" not in ARGS.skip:
        progress("part 2: APB-shaped and decode-shaped calls")
        report["shaped"] = shaped_rows(device, ARGS.smoke)
        for row in report["shaped"]:
            cells = "  ".join(f"{name} {b['ms']:.3f} ms" for name, b in row["backends"].items())
            print(f"{row['call']:<34} err {row['max_abs_err_vs_reference']:.1e}  {cells}")
    if "simulated" not in ARGS.skip:
        progress("part 3: simulated hosts")
        link = Link(gb_per_s=ARGS.gb_per_s, latency_us=ARGS.latency_us)
        model, shape, dtype = build_model(device, ARGS.smoke)
        rows = prefill_suite.run_simulated(model, GRID, list(prefill_suite.METHODS), link, 1, progress)
        report["simulated"] = {"model": {**shape, "dtype": dtype, "weights": "random"},
                               "modelled": f"network: {prefill_suite.link_description(link)}; hosts meet at "
                                           f"every layer with communication",
                               "rows": rows}
        prefill_suite.print_table(rows, "simulated")
    report["wall_s"] = time.perf_counter() - started
    out = ARGS.out or (os.path.join(RESULTS, "gpu_suite.json") if not ARGS.smoke else
                       os.path.join(os.environ.get("TMPDIR", "/tmp"), "gpu_suite_smoke.json"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as handle:
        json.dump(report, handle, indent=1, default=float)
    if "simulated" in report:
        prefill_suite.plot(report["simulated"]["rows"], os.path.splitext(out)[0] + ".png",
                           f"{report['device']}: simulated hosts, {report['simulated']['modelled']}")
    print(f"wrote {out} in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
