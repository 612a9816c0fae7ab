"""Compile the full Triton matrix for sm_80 and sm_90; registers, spills and shared memory per build.

No GPU needed. Every combination the runtime may launch (`triton_aot.full_matrix`: dtypes x
head dims 64/128/256 x GQA groups 1/4/8 x causal or not x prefill / decode shape x fresh or
resumed running state, and on sm_90 each of those with tensor descriptors too) is built
from the runtime's own `build_launches` on meta tensors and compiled with Triton, with
ptxas's own figures for each cubin (registers, spills; `triton_aot.compile_with_usage`). Prints the
GQA-8 causal builds (the Llama-3 shape) and a summary, and writes
benchmarks/results/kernel_report.json with every record, the problems found
(`triton_aot.record_problems`: shared memory over the part, no wgmma on Hopper, TMA asked
for and missing, any spill) and the sha256 of the kernel sources it compiled.

`tests/test_triton_compile.py` compiles a covering subset in every run and fails when the
kernel sources no longer match the committed report's hash: after changing
longctx/kernels/triton_kernels.py, triton_launch.py or triton_aot.py, run this (15-20 minutes
on 2 cores with a cold Triton cache) and commit the report. Exits 1 on any problem.

Example:
    python benchmarks/kernel_report.py
    python benchmarks/kernel_report.py --arch 90 --out /tmp/report.json    # one arch, elsewhere
    python benchmarks/kernel_report.py --smoke --out /tmp/report.json      # CI: one case per arch, not the matrix
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

from longctx.kernels.triton_aot import (KERNEL_SOURCES, SHAPES, compile_all, full_matrix,  # noqa: E402
                                        kernel_source_hash, record_problems)

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "kernel_report.json"


def line(record):
    """One human-readable line for a compilation record."""
    case, config, usage = record["case"], record["config"], record["usage"] or {}
    blocks = f"M{config['BLOCK_M']:<3} N{config['BLOCK_N']:<3} " if "BLOCK_M" in config else " " * 10
    shape = case["shape"] + ("+LAO" if case["resume"] else "") + ("+TMA" if record["constexprs"].get("KV_TMA") else "")
    return (f"sm_{case['arch']} {case['dtype']:<4} d{case['head_dim']:<3} {shape:<15} "
            f"{record['kernel'].strip('_'):<24} {blocks}w{config['num_warps']} s{config['num_stages']}  "
            f"regs {usage.get('registers')!s:>3}  spill st/ld {usage.get('spill_stores')}/{usage.get('spill_loads')} B  "
            f"smem {record['shared_bytes'] / 1024:6.1f} KB / {record['shared_limit'] // 1024} KB  "
            f"{'wgmma' if record['wgmma'] else ''}")


def sort_key(record):
    case, config = record["case"], record["config"]
    return (case["arch"], case["dtype"], case["head_dim"], case["group"], not case["causal"], case["shape"],
            case["resume"], case["tma"], record["kernel"], config.get("BLOCK_M", 0), config.get("BLOCK_N", 0),
            config["num_warps"], config["num_stages"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=[80, 90])
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: CPU count)")
    parser.add_argument("--smoke", action="store_true",
                        help="CI: compile only the first case of each arch (needs --out; not a report to commit)")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.smoke and args.out == DEFAULT_OUT:
        parser.error("--smoke writes a partial report: name another file with --out")
    start = time.perf_counter()
    source_hash = kernel_source_hash()
    cases = full_matrix(tuple(args.arch))
    if args.smoke:
        cases = [next(case for case in cases if case.arch == arch) for arch in args.arch]
    records = sorted(compile_all(cases, args.workers), key=sort_key)
    for record in records:
        if record["case"]["group"] == 8 and record["case"]["causal"]:
            print(line(record))
    problems = record_problems(records)
    elapsed = time.perf_counter() - start
    most = max(records, key=lambda r: (r["usage"] or {}).get("registers") or 0)
    print(f"{len(records)} compilations of {len(cases)} cases in {elapsed:.0f} s; {len(problems)} problems; "
          f"most registers: {line(most)}")
    for problem in problems:
        print("PROBLEM:", problem)
    report = {
        "report": "Triton attention kernel, full compile matrix: registers, spills and shared "
                  "memory per build",
        "created_unix": time.time(),
        "command": " ".join(["python benchmarks/kernel_report.py", *(argv if argv is not None else sys.argv[1:])]),
        "kernel_sources": [f"longctx/kernels/{name}" for name in KERNEL_SOURCES],
        "kernel_source_sha256": source_hash,
        "versions": {"triton": triton.__version__, "python": platform.python_version()},
        "how": "triton.compile for GPUTarget('cuda', arch, 32) of the launches build_launches makes on meta tensors "
               f"(B=1, 8 KV heads; prefill {SHAPES['prefill']}, decode {SHAPES['decode']}); registers "
               "and spills from the log of the ptxas run that built each cubin, shared memory from its metadata",
        "smoke": args.smoke,
        "full_matrix": {"archs": args.arch, "cases": len(cases), "compilations": len(records),
                        "problems": problems},
        "records": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    body = ",\n".join("  " + json.dumps(record) for record in records)
    head = json.dumps({key: value for key, value in report.items() if key != "records"}, indent=1)
    args.out.write_text(head[:-2] + ',\n "records": [\n' + body + "\n ]\n}\n")
    print(f"wrote {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
