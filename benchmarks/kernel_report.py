"""Registers, spills and shared memory of every Triton attention configuration, per target.

No GPU needed. For sm_80 (A100) and sm_90 (H100/H200), every dtype and head dim 64/128/256,
it builds the launches the runtime would run (`build_launches` on meta tensors: a causal
GQA-8 prefill of 4,096 tokens, whose autotune candidates are all compiled, the same folded
into a running state as the ring does, and a decode step, which takes the split-K path and
its combine kernel), compiles each with Triton and
runs the bundled `ptxas -v` on the PTX. Prints one line per compilation and writes
benchmarks/results/kernel_report.json.

Example:
    python benchmarks/kernel_report.py            # about 2 minutes with a cold Triton cache
    python benchmarks/kernel_report.py --arch 90 --out /tmp/report.json
"""

import argparse
import json
import os
import pathlib
import platform
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)  # interpreted kernels cannot be compiled
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 = its default
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import triton  # noqa: E402

from longctx.kernels.triton_aot import DTYPES, SHAPES, Case, compile_all  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "kernel_report.json"


def report_cases(archs):
    """Per (arch, dtype, head dim): a causal GQA-8 prefill, the same folding into a running
    state (the ring's LAO step), and a decode step."""
    return [Case(arch, dtype, head_dim, 8, True, shape, resume)
            for arch in archs for dtype in DTYPES for head_dim in (64, 128, 256)
            for shape, resume in (("prefill", False), ("prefill", True), ("decode", False))]


def line(record):
    """One human-readable line for a compilation record."""
    case, config, usage = record["case"], record["config"], record.get("ptxas") or {}
    blocks = f"M{config['BLOCK_M']:<3} N{config['BLOCK_N']:<3} " if "BLOCK_M" in config else " " * 10
    spills = f"{usage.get('spill_stores')}/{usage.get('spill_loads')}"
    shape = case["shape"] + ("+LAO" if case["resume"] else "")
    return (f"sm_{case['arch']} {case['dtype']:<4} d{case['head_dim']:<3} {shape:<11} "
            f"{record['kernel'].strip('_'):<24} {blocks}w{config['num_warps']} s{config['num_stages']}  "
            f"regs {usage.get('registers')!s:>3}  spill st/ld {spills:>9}  "
            f"smem {record['shared_bytes'] / 1024:6.1f} KB / {record['shared_limit'] // 1024} KB  "
            f"{'wgmma' if record['wgmma'] else ''}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=[80, 90])
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: CPU count)")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    records = compile_all(report_cases(args.arch), args.workers, with_ptxas=True)
    records.sort(key=lambda r: (r["case"]["arch"], r["case"]["dtype"], r["case"]["head_dim"], r["case"]["shape"],
                                r["case"]["resume"],
                                r["kernel"], r["config"].get("BLOCK_M", 0), r["config"].get("BLOCK_N", 0)))
    for record in records:
        print(line(record))
    elapsed = time.perf_counter() - start
    over = [r for r in records if r["shared_bytes"] > r["shared_limit"]]
    spilling = [r for r in records if (r.get("ptxas") or {}).get("spill_stores")]
    print(f"{len(records)} compilations in {elapsed:.0f} s; {len(over)} over the shared-memory limit, "
          f"{len(spilling)} spilling")
    report = {
        "report": "Triton attention kernel: registers per thread, spills (bytes) and shared memory per configuration",
        "created_unix": time.time(),
        "versions": {"triton": triton.__version__, "python": platform.python_version()},
        "how": "triton.compile for GPUTarget('cuda', arch, 32) of the launches build_launches makes on meta tensors "
               "(B=1, 8 KV heads, GQA 8, causal; prefill (fresh and +LAO: resumed running state) "
               f"{SHAPES['prefill']}, decode {SHAPES['decode']}); registers and spills from the bundled ptxas -v, "
               "shared memory from the compiled metadata",
        "records": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
