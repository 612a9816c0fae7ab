"""Ahead-of-time compilation of the Triton launches the wrapper can choose, for sm_80 and sm_90.

No GPU needed: Triton compiles to PTX and a cubin on the CPU. The launches come from the
runtime's own `build_launches` (on meta tensors) via `longctx.kernels.triton_aot`, so the
test compiles what would run. Checked per compilation (`triton_aot.record_problems`): it
succeeds, its shared memory fits the part (A100 163 KB, H100/H200 227 KB opt-in per block),
its cubin spills no register (no stack frame, read with cuobjdump from the binary Triton
built), on sm_90 every 16-bit kernel issues wgmma, and a build with tensor descriptors copies
K/V with TMA.

The compiler cannot run in this pytest process (conftest sets TRITON_INTERPRET, which makes
kernels interpreted), so compilation runs in a subprocess without it, in a process pool.

* `test_compile_covering_set`: every (arch, dtype, head dim) with all of its configurations
  (the autotune candidates and the split-K one) and the combine kernel, cycling the mask
  kind, GQA group and state mode through them so that every value of each appears on both
  archs, and the sm_90 tensor-descriptor builds: about 90 compilations, about a minute on
  2 cores with a cold Triton cache (seconds when warm). Mask kind, group and state change
  masks and index arithmetic, not tile shapes, stages or dtypes, which decide shared memory,
  registers and the MMA kind.
* The full cross product (dtypes x head dims x groups x masks x shapes x states x TMA, both
  archs; about 800 compilations, 15-20 minutes on 2 cores) is compiled by
  `python benchmarks/kernel_report.py`, which writes benchmarks/results/kernel_report.json
  with the hash of the kernel sources it compiled. `test_kernel_report_is_current` fails
  when the kernel sources changed since: regenerate the report (that command) and commit it.
"""

import dataclasses
import itertools
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton")

# Importing these does not compile anything, so the interpreter flag does not matter here.
from longctx.kernels.triton_aot import DTYPES as DTYPES_TORCH, TARGETS, Case, kernel_source_hash  # noqa: E402
from longctx.kernels.triton_launch import split_config, tune_configs  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
REPORT = REPO_ROOT / "benchmarks" / "results" / "kernel_report.json"
DTYPES = ("bf16", "fp16", "fp32")
HEAD_DIMS = (64, 128, 256)
GROUPS = (1, 4, 8)


def covering_cases():
    """Every (arch, dtype, head dim) at prefill and decode shape, with the mask kind, group
    and state mode cycling through them; on sm_90 the 16-bit ones with tensor descriptors too."""
    cases = []
    for arch in (80, 90):
        for index, (dtype, head_dim) in enumerate(itertools.product(DTYPES, HEAD_DIMS)):
            for shape in ("prefill", "decode"):
                for tma in (False, True) if arch >= 90 and dtype != "fp32" else (False,):
                    cases.append(dict(arch=arch, dtype=dtype, head_dim=head_dim, group=GROUPS[index % 3],
                                      causal=index % 2 == 0, shape=shape, resume=(index + arch + tma) % 2 == 1,
                                      tma=tma))
    return cases


def compile_in_subprocess(args, stdin=None, timeout=3600):
    """Run `python -m longctx.kernels.triton_aot ARGS` without TRITON_INTERPRET; returns
    the list of JSON records it printed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 = its default
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "longctx.kernels.triton_aot", *args], input=stdin,
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_covering_set_covers_every_value():
    """The default set reaches every dtype, head dim, group, mask kind, shape and state mode on
    both archs, and TMA with both states and shapes on sm_90 (so a value that fails to compile
    anywhere cannot hide until the full matrix is next compiled)."""
    cases = covering_cases()
    for arch in (80, 90):
        mine = [c for c in cases if c["arch"] == arch]
        for field, values in (("dtype", DTYPES), ("head_dim", HEAD_DIMS), ("group", GROUPS),
                              ("causal", (True, False)), ("shape", ("prefill", "decode")), ("resume", (False, True))):
            assert {c[field] for c in mine} == set(values), (arch, field)
    tma = [c for c in cases if c["tma"]]
    assert {c["arch"] for c in tma} == {90}
    assert {(c["dtype"], c["head_dim"], c["shape"]) for c in tma} == set(itertools.product(("bf16", "fp16"), HEAD_DIMS,
                                                                                            ("prefill", "decode")))
    assert {c["resume"] for c in tma} == {False, True}


def test_compile_covering_set():
    from longctx.kernels.triton_aot import record_problems

    records = compile_in_subprocess([], stdin=json.dumps(covering_cases()))
    assert records, "nothing was compiled"
    assert record_problems(records) == []
    # Every configuration of every (arch, dtype, head dim) the wrapper can choose was built,
    # and on sm_90 every 16-bit (dtype, head dim) with tensor descriptors as well.
    built = {(r["case"]["arch"], r["case"]["dtype"], r["case"]["head_dim"], r["constexprs"]["KV_TMA"],
              r["config"]["BLOCK_M"], r["config"]["BLOCK_N"], r["config"]["num_warps"], r["config"]["num_stages"])
             for r in records if r["kernel"] == "_attention_fwd_kernel"}
    wanted = set()
    for arch, dtype, head_dim in itertools.product((80, 90), DTYPES, HEAD_DIMS):
        for tma in (False, True) if arch >= 90 and dtype != "fp32" else (False,):
            for config in _choosable_configs(arch, dtype, head_dim):
                wanted.add((arch, dtype, head_dim, tma, config["BLOCK_M"], config["BLOCK_N"], config["num_warps"],
                            config["num_stages"]))
    assert wanted <= built, sorted(wanted - built)
    assert all(r["tma"] for r in records if r["constexprs"].get("KV_TMA"))
    assert any(r["kernel"] == "_combine_splits_kernel" for r in records)


def _choosable_configs(arch, dtype, head_dim):
    """The main-kernel configurations the wrapper may pick, from its own functions."""
    target = TARGETS[arch]
    return [*tune_configs(target, DTYPES_TORCH[dtype], head_dim, head_dim),
            split_config(target, DTYPES_TORCH[dtype], head_dim, head_dim)]


def test_kernel_report_is_current():
    """The committed report compiled today's kernel sources in full, without a problem."""
    report = json.loads(REPORT.read_text())
    assert report["kernel_source_sha256"] == kernel_source_hash(), (
        "the Triton kernel sources (longctx/kernels/triton_kernels.py, triton_launch.py, triton_aot.py) changed "
        "since benchmarks/results/kernel_report.json was made: compile the full matrix and regenerate it with "
        "`python benchmarks/kernel_report.py` (15-20 minutes on 2 cores; fails on any problem), then commit it")
    matrix = report["full_matrix"]
    assert matrix["archs"] == [80, 90] and matrix["problems"] == []
    assert matrix["compilations"] >= 700 and matrix["cases"] >= 600


def test_cases_are_plain_data():
    """The case dicts are exactly the fields of the Case the subprocess builds from them."""
    fields = {f.name for f in dataclasses.fields(Case)}
    assert all(set(case) == fields for case in covering_cases())
