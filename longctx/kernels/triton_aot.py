"""Ahead-of-time compilation of the Triton attention launches for a GPU that is not here.

Triton compiles to PTX and a cubin without a GPU (ptxas ships with it). `compile_launch`
turns one `Launch` from `triton_launch.build_launches` (built on meta tensors) plus one
of its configurations into exactly what the runtime's JIT would compile: the argument
types and specialisations come from Triton's own specialisation of the same argument
values (integers equal to 1 become constants, multiples of 16 and pointers get the
divisibility hint; meta tensors count as 16-byte aligned, as fresh allocations are).

Each build's registers and spills are ptxas's own figures for the cubin Triton built (its
log, with Triton's ptxas options), so a spill shows exactly as it would run.

Used by tests/test_triton_compile.py and benchmarks/kernel_report.py. Triton must have been
imported without TRITON_INTERPRET (interpreted kernels cannot be compiled).
"""

import argparse
import contextlib
import hashlib
import io
import itertools
import json
import os
import pathlib
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import torch
import triton
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource

from longctx.kernels.triton_launch import Target, build_launches

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


USAGE_FILE = "longctx_ptxas_usage.json"  # kept beside a build in Triton's cache


def compile_with_usage(launch, config, arch):
    """(compiled kernel, usage) of `launch` built with `config` for sm_`arch`. `usage` comes
    from the log of the ptxas run that built the very cubin (Triton's own ptxas options):
    {registers, stack_frame, spill_stores, spill_loads} in registers per thread and bytes
    (a stack frame alone can hold a called routine's saved registers; spills are spills).
    Triton's cache keeps the cubin, not the log, so the usage is kept beside it; a build found
    in the cache without it is rebuilt once. None where no log was printed."""
    from triton.runtime.cache import get_cache_manager

    compiled, usage = _compile_logging_ptxas(launch, config, arch, always=False)
    manager = get_cache_manager(compiled.hash)
    if usage is None:  # found in Triton's cache: no ptxas ran
        kept = manager.get_file(USAGE_FILE)
        if kept:
            with open(kept, encoding="utf-8") as handle:
                return compiled, json.load(handle)
        compiled, usage = _compile_logging_ptxas(launch, config, arch, always=True)
    if usage is not None:
        manager.put(json.dumps(usage), USAGE_FILE, binary=False)
    return compiled, usage


def _compile_logging_ptxas(launch, config, arch, always):
    """`compile_launch` with Triton printing its ptxas log (captured and parsed); `always`
    bypasses Triton's cache. Returns (compiled, usage or None when ptxas did not run)."""
    from triton import knobs

    settings = knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    log = io.StringIO()
    try:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = True, always
        with contextlib.redirect_stdout(log):
            compiled = compile_launch(launch, config, arch)
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = settings
    return compiled, parse_ptxas_log(log.getvalue())


def parse_ptxas_log(text):
    """{registers, stack_frame, spill_stores, spill_loads} from `ptxas -v` output (sums over
    the functions it lists, registers the largest), or None when it has no such figures."""
    registers = [int(n) for n in re.findall(r"Used (\d+) registers", text)]
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if not registers or not frames:
        return None
    return {"registers": max(registers), "stack_frame": sum(int(f[0]) for f in frames),
            "spill_stores": sum(int(f[1]) for f in frames), "spill_loads": sum(int(f[2]) for f in frames)}


@dataclass(frozen=True)
class Case:
    """One call the runtime may see: target arch, dtype name, head dim, GQA group, mask
    kind, shape name (see SHAPES), whether it folds into a running state (LAO) and whether
    K/V may come through tensor descriptors (`tma`, sm_90 only; 16-bit builds use them)."""

    arch: int
    dtype: str
    head_dim: int
    group: int
    causal: bool
    shape: str
    resume: bool
    tma: bool = False


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
                          scale=case.head_dim ** -0.5, resume=case.resume, target=case_target(case))


def case_target(case):
    """The `Target` a case compiles for: its arch, with TMA when the case asks for it."""
    if case.tma and case.arch < 90:
        raise ValueError(f"tensor descriptors need sm_90 or later, not sm_{case.arch}")
    target = TARGETS[case.arch]
    return Target(target.arch, target.num_sms, tma=case.tma)


def full_matrix(archs=(80, 90)):
    """Every combination: dtypes x head dims 64/128/256 x GQA groups 1/4/8 x causal or not
    x prefill/decode shapes x fresh or resumed state, per arch, and on sm_90 each of those
    with K/V through tensor descriptors as well."""
    return [Case(*values, tma=tma) for values in itertools.product(
        archs, DTYPES, (64, 128, 256), (1, 4, 8), (True, False), ("prefill", "decode"), (False, True))
        for tma in ((False, True) if values[0] >= 90 else (False,))]


def uses_tma(compiled):
    """True when the PTX copies tiles with the Hopper tensor-memory accelerator."""
    return "cp.async.bulk.tensor" in compiled.asm["ptx"]


def record_problems(records):
    """One line per thing wrong in compilation `records` (empty when all is well): shared
    memory over the part's limit, a Hopper 16-bit main-kernel build without wgmma, a TMA case
    whose PTX does not use TMA, a register spill (ptxas's figures for the cubin), a build
    without those figures."""
    problems = []
    for record in records:
        case, usage = record["case"], record["usage"]
        name = (f"{record['kernel']} sm_{case['arch']} {case['dtype']} d{case['head_dim']} group {case['group']} "
                f"{'causal' if case['causal'] else 'full'} {case['shape']}{' resumed' if case['resume'] else ''}"
                f"{' tma' if case.get('tma') else ''} {record['config']}")
        if record["shared_bytes"] > record["shared_limit"]:
            problems.append(f"{name}: shared memory {record['shared_bytes']} B over the part's "
                            f"{record['shared_limit']} B")
        main = record["kernel"] == "_attention_fwd_kernel"
        if main and case["arch"] >= 90 and case["dtype"] != "fp32" and not record["wgmma"]:
            problems.append(f"{name}: a Hopper 16-bit build without wgmma")
        if main and record["constexprs"].get("KV_TMA") and not record["tma"]:
            problems.append(f"{name}: asked for tensor descriptors, the PTX has no TMA copy")
        if usage is None:
            problems.append(f"{name}: no ptxas figures (the build printed no ptxas log)")
        elif usage["spill_stores"] or usage["spill_loads"]:
            problems.append(f"{name}: spills registers ({usage['registers']} registers, {usage['spill_stores']} B "
                            f"stored, {usage['spill_loads']} B loaded)")
    return problems


# The files whose text decides what the compile matrix builds: the kernels, their launch
# planning and this module's cases. benchmarks/kernel_report.py records their hash.
KERNEL_SOURCES = ("triton_kernels.py", "triton_launch.py", "triton_aot.py")


def kernel_source_hash():
    """sha256 (hex) over the kernel sources (KERNEL_SOURCES, in order, newlines normalised)."""
    digest = hashlib.sha256()
    for name in KERNEL_SOURCES:
        text = (pathlib.Path(__file__).resolve().parent / name).read_text(encoding="utf-8")
        digest.update(name.encode() + b"\0" + text.replace("\r\n", "\n").encode("utf-8") + b"\0")
    return digest.hexdigest()


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


def compile_job(job):
    """Compile one job; returns a JSON-ready record (kernel, case, config, constexprs, shared
    memory and its limit, whether the PTX uses wgmma and TMA, registers and stack frame)."""
    case, launch_index, config_index = job
    launch = case_launches(case)[launch_index]
    config = launch.configs[config_index]
    compiled, usage = compile_with_usage(launch, config, case.arch)
    record = {
        "kernel": launch.name, "case": asdict(case), "config": dict(config),
        "constexprs": {p.name: launch.args[p.name] for p in launch.kernel.params
                       if p.is_constexpr and p.name in launch.args},
        "out_dtype": str(launch.args["Out"].dtype).replace("torch.", ""),
        "shared_bytes": compiled.metadata.shared, "shared_limit": SHARED_MEMORY_LIMIT[case.arch],
        "wgmma": uses_wgmma(compiled), "tma": uses_tma(compiled),
    }
    record["usage"] = usage
    return record


def compile_all(cases, workers=None):
    """Compile every unique job behind `cases` (in a process pool); returns the records."""
    jobs = compile_jobs(cases)
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        return [compile_job(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(compile_job, jobs))


def main(argv=None):
    """CLI for the compile test: compile a case list given as JSON on stdin (or the full
    matrix) and print one JSON record per compilation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full matrix instead of cases on stdin")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    cases = full_matrix() if args.full else [Case(**c) for c in json.load(sys.stdin)]
    for record in compile_all(cases, args.workers):
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
