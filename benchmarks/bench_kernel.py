"""Benchmark the Triton attention kernel against torch SDPA (FlashAttention and cuDNN backends).

GPU only: exits with a message when CUDA is unavailable. For each sequence length it

1. checks the Triton output against torch SDPA (max abs error) and the Triton lse against a
   float32 recomputation on a sample of query rows;
2. times the Triton kernel, SDPA with the FLASH_ATTENTION backend and SDPA with the
   CUDNN_ATTENTION backend, side by side in the same process;

then writes everything to a JSON file (--out) and, if matplotlib is importable, a PNG plot
next to it. A backend that cannot run a shape is recorded with its error instead of a time.

Example:
    python benchmarks/bench_kernel.py --seq-lens 4096 16384 32768 --out benchmarks/results/kernel.json
"""

import argparse
import json
import math
import pathlib
import platform
import sys
import time

import torch

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "kernel.json"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None):
    """Command-line options; defaults are B=1, Hq=32, Hkv=8, D=128, causal, bf16, S in 4K/16K/32K."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--q-heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--non-causal", action="store_true", help="benchmark full (non-causal) attention")
    parser.add_argument("--warmup-ms", type=float, default=100.0, help="triton.testing.do_bench warmup")
    parser.add_argument("--rep-ms", type=float, default=500.0, help="triton.testing.do_bench measuring time")
    parser.add_argument("--tolerance", type=float, default=2e-2, help="max abs error allowed vs SDPA")
    parser.add_argument("--lse-rows", type=int, default=256, help="query rows sampled for the lse check")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="JSON results path")
    parser.add_argument("--no-plot", action="store_true")
    return parser.parse_args(argv)


def attention_flops(batch, q_heads, q_len, k_len, head_dim, causal):
    """Forward FLOPs (2 matmuls, 2 FLOPs per MAC) counting only visible query/key pairs."""
    if causal:
        shift = k_len - q_len  # bottom-right aligned: row i sees keys 0..i+shift
        pairs = sum(max(0, min(k_len, i + shift + 1)) for i in range(q_len))
    else:
        pairs = q_len * k_len
    return 4.0 * batch * q_heads * pairs * head_dim


def sdpa_runner(q, k, v, causal, backend):
    """A zero-argument callable running SDPA with one backend, and how GQA is fed to it.

    Tries native GQA (enable_gqa=True) first and falls back to K/V repeated to Hq heads when
    the backend rejects it. Raises RuntimeError when the backend cannot run the shape at all.
    """
    from torch.nn.attention import sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    group = q.shape[1] // k.shape[1]
    k_rep = v_rep = None
    attempts = [("native", k, v, {"enable_gqa": True})]
    if group > 1:
        k_rep, v_rep = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        attempts.append(("repeated", k_rep, v_rep, {}))
    errors = []
    for mode, kk, vv, extra in attempts:
        def run(kk=kk, vv=vv, extra=extra):
            with sdpa_kernel([backend]):
                return sdpa(q, kk, vv, is_causal=causal, **extra)

        try:
            run()
            torch.cuda.synchronize()
            return run, mode
        except RuntimeError as exc:  # backend does not support this input
            errors.append(f"{mode}: {str(exc).splitlines()[0]}")
    raise RuntimeError("; ".join(errors))


def lse_spot_check(q, k, lse, causal, rows, scale):
    """Max abs error of `lse` on `rows` sampled query rows against a float32 recomputation."""
    q_len, k_len = q.shape[2], k.shape[2]
    group = q.shape[1] // k.shape[1]
    idx = torch.randperm(q_len, device=q.device)[: min(rows, q_len)]
    qs = q[:, :, idx].float()
    kf = k.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("bhqd,bhkd->bhqk", qs, kf) * scale
    if causal:
        cols = torch.arange(k_len, device=q.device)
        scores = scores.masked_fill(cols[None, :] > (idx[:, None] + k_len - q_len), float("-inf"))
    ref = torch.logsumexp(scores, dim=-1)
    return (lse[:, :, idx] - ref).abs().max().item()


def bench_one(args, seq_len, dtype):
    """Check and time one sequence length; returns a JSON-ready dict."""
    import triton.testing
    from torch.nn.attention import SDPBackend

    from longctx.kernels.triton_attention import triton_attention

    causal = not args.non_causal
    gen = torch.Generator(device="cuda").manual_seed(seq_len)
    shape_q = (args.batch, args.q_heads, seq_len, args.head_dim)
    shape_kv = (args.batch, args.kv_heads, seq_len, args.head_dim)
    q = torch.randn(shape_q, generator=gen, device="cuda", dtype=dtype)
    k = torch.randn(shape_kv, generator=gen, device="cuda", dtype=dtype)
    v = torch.randn(shape_kv, generator=gen, device="cuda", dtype=dtype)
    scale = 1.0 / math.sqrt(args.head_dim)
    flops = attention_flops(args.batch, args.q_heads, seq_len, seq_len, args.head_dim, causal)
    result = {"seq_len": seq_len, "flops": flops, "backends": {}}

    runners = {"triton": (lambda: triton_attention(q, k, v, causal=causal), "native")}
    for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            runners[name] = sdpa_runner(q, k, v, causal, backend)
        except RuntimeError as exc:
            result["backends"][name] = {"error": str(exc)}

    # Correctness: Triton vs the first SDPA backend that runs (never the O(S^2)-memory math
    # path), and the Triton lse vs a float32 recomputation on sampled rows.
    out, lse = triton_attention(q, k, v, causal=causal)
    reference_name = next((name for name in ("sdpa_flash", "sdpa_cudnn") if name in runners), None)
    result["compared_against"] = reference_name
    err = float("nan")
    if reference_name is not None:
        expected = runners[reference_name][0]()
        err = (out.float() - expected.float()).abs().max().item()
        del expected
    lse_err = lse_spot_check(q, k, lse, causal, args.lse_rows, scale)
    result["max_abs_err_vs_sdpa"] = err
    result["lse_max_abs_err_sampled"] = lse_err
    result["ok"] = bool(err <= args.tolerance and lse_err <= 1e-2)  # False when nothing to compare with
    del out, lse
    for name, (fn, gqa_mode) in runners.items():
        ms = triton.testing.do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median")
        result["backends"][name] = {"ms": ms, "tflops": flops / (ms * 1e-3) / 1e12, "gqa": gqa_mode}
    return result


def plot(results, path, title):
    """Save a TFLOP/s-vs-sequence-length plot; returns False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    seq_lens = [r["seq_len"] for r in results]
    names = sorted({name for r in results for name in r["backends"]})
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [r["backends"].get(name, {}).get("tflops", 0.0) for r in results]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(seq_lens))]
        ax.bar(xs, values, width, label=name)
    ax.set_xticks(range(len(seq_lens)), [f"{s // 1024}K" if s % 1024 == 0 else str(s) for s in seq_lens])
    ax.set_xlabel("sequence length")
    ax.set_ylabel("TFLOP/s (visible pairs only)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None):
    """Run the benchmark; returns a process exit code (1 when a correctness check fails)."""
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernel.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing to do.", file=sys.stderr)
        return 2
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import triton

    dtype = DTYPES[args.dtype]
    causal = not args.non_causal
    print(
        f"GPU {torch.cuda.get_device_name()} | B={args.batch} Hq={args.q_heads} Hkv={args.kv_heads} "
        f"D={args.head_dim} {args.dtype} {'causal' if causal else 'full'}"
    )
    results = []
    for seq_len in args.seq_lens:
        row = bench_one(args, seq_len, dtype)
        results.append(row)
        timings = "  ".join(
            f"{name} {b['ms']:.3f} ms ({b['tflops']:.0f} TFLOP/s)" if "ms" in b else f"{name} n/a"
            for name, b in row["backends"].items()
        )
        print(
            f"S={seq_len:>6}  err {row['max_abs_err_vs_sdpa']:.2e}  lse err {row['lse_max_abs_err_sampled']:.2e}"
            f"  {'ok' if row['ok'] else 'FAIL'}  |  {timings}"
        )
        torch.cuda.empty_cache()

    report = {
        "benchmark": "attention forward: Triton kernel vs torch SDPA (flash, cudnn)",
        "created_unix": time.time(),
        "device": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version()},
        "config": {
            "batch": args.batch, "q_heads": args.q_heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim,
            "dtype": args.dtype, "causal": causal, "tolerance": args.tolerance,
            "timing": f"triton.testing.do_bench median, warmup {args.warmup_ms} ms, rep {args.rep_ms} ms",
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    if not args.no_plot:
        png = args.out.with_suffix(".png")
        title = f"attention fwd, Hq={args.q_heads} Hkv={args.kv_heads} D={args.head_dim} {args.dtype}"
        if plot(results, png, title + (" causal" if causal else "")):
            print(f"wrote {png}")
        else:
            print("matplotlib not importable: no plot written")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
