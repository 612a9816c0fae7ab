"""Ahead-of-time compilation of the Triton attention launches for a GPU that is not here.

Triton compiles to PTX and a cubin without a GPU (ptxas ships with it). `compile_launch`
turns one `Launch` from `triton_attention.build_launches` (built on meta tensors) plus one
of its configurations into exactly what the runtime's JIT would compile: the argument
types and specialisations come from Triton's own specialisation of the same argument
values (integers equal to 1 become constants, multiples of 16 and pointers get the
divisibility hint; meta tensors count as 16-byte aligned, as fresh allocations are).

Used by tests/test_triton_compile.py and benchmarks/kernel_report.py. Triton must have been
imported without TRITON_INTERPRET (interpreted kernels cannot be compiled).
"""

import argparse
import itertools
import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import torch
import triton
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource

from longctx.kernels.triton_attention import Target, build_launches

# The parts compiled for: A100 (sm_80) and H100/H200 (sm_90), with their SM counts.
TARGETS = {80: Target(arch=80, num_sms=108), 90: Target(arch=90, num_sms=132)}
# Shared memory a block may use (the opt-in maximum), in bytes, per target arch.
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# (q_len, k_len): prefill fills the GPU (no split); decoding (1 query) and the query pass
# (tens of question tokens) take the split-K path and compile the same kernels.
SHAPES = {"prefill": (4096, 4096), "query": (40, 8192), "decode": (1, 8192)}
KV_HEADS = 8


def _specialize(value, specialize):
    """(type, specialisation) of one runtime argument, as the JIT computes it."""
    from triton._C.libtriton import native_specialize_impl

    return native_specialize_impl(BaseBackend, value, False, specialize, True)


def ast_source(launch, config):
    """The `ASTSource` the JIT would build for `launch` run with `config`."""
    kernel = launch.kernel
    values = {**launch.args, **{k: v for k, v in config.items() if k not in ("num_warps", "num_stages")}}
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(kernel.params):
        value = values[param.name]
        if param.is_constexpr:
            kind, spec = "constexpr", None
        else:
            kind, spec = _specialize(value, not param.do_not_specialize)
        signature[param.name] = kind
        if kind == "constexpr":
            constexprs[(index,)] = value if param.is_constexpr else spec
        elif isinstance(spec, str) and spec:
            attrs[(index,)] = BaseBackend.parse_attr(spec)
    return ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)


def compile_launch(launch, config, arch):
    """Compile `launch` with `config` for sm_`arch`; returns Triton's CompiledKernel (its
    .asm has "ptx" and "cubin", its .metadata the shared memory in bytes)."""
    options = {"num_warps": config["num_warps"], "num_stages": config["num_stages"]}
    return triton.compile(ast_source(launch, config), target=GPUTarget("cuda", arch, 32), options=options)


def uses_wgmma(compiled):
    """True when the PTX issues Hopper warpgroup MMAs."""
    return "wgmma.mma_async" in compiled.asm["ptx"]


def ptxas_usage(compiled, arch):
    """Registers per thread, spill stores/loads (bytes) and static shared memory from
    `ptxas -v` on the compiled PTX; None where ptxas is not found."""
    import os
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    try:
        ptxas = get_ptxas(arch).path
    except Exception:  # noqa: BLE001 - no bundled ptxas: report without it
        return None
    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as handle:
            handle.write(compiled.asm["ptx"])
        result = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{arch}{suffix}", ptx, "-o", os.path.join(tmp, "k.o")],
                                capture_output=True, text=True, timeout=300)
    text = result.stdout + result.stderr
    registers = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    smem = re.search(r"(\d+) bytes smem", text)
    return {
        "registers": int(registers.group(1)) if registers else None,
        "spill_stores": int(spills.group(1)) if spills else None,
        "spill_loads": int(spills.group(2)) if spills else None,
        "static_smem": int(smem.group(1)) if smem else 0,
    }



@dataclass(frozen=True)
class Case:
    """One call the runtime may see: target arch, dtype name, head dim, GQA group, mask
    kind, shape name (see SHAPES) and whether it folds into a running state (LAO)."""

    arch: int
    dtype: str
    head_dim: int
    group: int
    causal: bool
    shape: str
    resume: bool


def case_launches(case):
    """The launches `build_launches` makes for `case`, on meta tensors (no memory, no GPU)."""
    q_len, k_len = SHAPES[case.shape]
    dtype, heads = DTYPES[case.dtype], KV_HEADS * case.group

    def meta(*shape, dtype=dtype):
        return torch.empty(shape, dtype=dtype, device="meta")

    q, k, v = meta(1, heads, q_len, case.head_dim), meta(1, KV_HEADS, k_len, case.head_dim), meta(1, KV_HEADS, k_len, case.head_dim)
    out = meta(1, heads, q_len, case.head_dim, dtype=torch.float32 if case.resume else dtype)
    lse = meta(1, heads, q_len, dtype=torch.float32)
    return build_launches(q, k, v, out, lse, causal=case.causal, anchor_len=0, prefix_len=0,
                          scale=case.head_dim ** -0.5, resume=case.resume, target=TARGETS[case.arch])


def full_matrix(archs=(80, 90)):
    """Every combination the brief asks for: dtypes x head dims 64/128/256 x causal or not
    x GQA groups 1/4/8 x prefill/decode shapes x fresh or resumed state, per arch."""
    return [Case(*values) for values in itertools.product(
        archs, DTYPES, (64, 128, 256), (1, 4, 8), (True, False), ("prefill", "decode"), (False, True))]


def compile_jobs(cases):
    """Unique compilations behind `cases`: a list of (case, launch index, config index),
    unique in what Triton's cache keys on (source, specialisation, options, arch); the
    first case that needs a compilation names it. Plain data, so it can go to a worker."""
    jobs = {}
    for case in cases:
        for launch_index, launch in enumerate(case_launches(case)):
            for config_index, config in enumerate(launch.configs):
                key = (case.arch, ast_source(launch, config).hash(), config["num_warps"], config["num_stages"])
                jobs.setdefault(key, (case, launch_index, config_index))
    return list(jobs.values())


def compile_job(job, with_ptxas=False):
    """Compile one job; returns a JSON-ready record (kernel, case, config, constexprs, shared
    memory and its limit, whether the PTX uses wgmma, compile seconds and, with
    `with_ptxas`, registers / spills from ptxas)."""
    case, launch_index, config_index = job
    launch = case_launches(case)[launch_index]
    config = launch.configs[config_index]
    start = time.perf_counter()
    compiled = compile_launch(launch, config, case.arch)
    record = {
        "kernel": launch.name, "case": asdict(case), "config": dict(config),
        "constexprs": {p.name: launch.args[p.name] for p in launch.kernel.params
                       if p.is_constexpr and p.name in launch.args},
        "out_dtype": str(launch.args["Out"].dtype).replace("torch.", ""),
        "shared_bytes": compiled.metadata.shared, "shared_limit": SHARED_MEMORY_LIMIT[case.arch],
        "wgmma": uses_wgmma(compiled), "compile_s": round(time.perf_counter() - start, 2),
    }
    if with_ptxas:
        record["ptxas"] = ptxas_usage(compiled, case.arch)
    return record


def _compile_job_ptxas(job):
    return compile_job(job, with_ptxas=True)


def compile_all(cases, workers=None, with_ptxas=False):
    """Compile every unique job behind `cases` (in a process pool); returns the records."""
    jobs = compile_jobs(cases)
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    run = _compile_job_ptxas if with_ptxas else compile_job
    if workers <= 1:
        return [run(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, jobs))


def main(argv=None):
    """CLI for the compile test: compile a case list given as JSON on stdin (or the full
    matrix) and print one JSON record per compilation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full matrix instead of cases on stdin")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--ptxas", action="store_true", help="add ptxas -v figures")
    args = parser.parse_args(argv)
    cases = full_matrix() if args.full else [Case(**c) for c in json.load(sys.stdin)]
    for record in compile_all(cases, args.workers, args.ptxas):
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
