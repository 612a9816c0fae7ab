"""Ahead-of-time compilation of every Triton launch the wrapper can choose, for sm_80 and sm_90.

No GPU needed: Triton compiles to PTX and a cubin on the CPU. The launches come from the
runtime's own `build_launches` (on meta tensors) via `longctx.kernels.triton_aot`, so the
test compiles what would run. Checked per compilation: it succeeds, its shared memory fits
the part (A100 163 KB, H100/H200 227 KB opt-in per block), and on sm_90 every 16-bit
kernel issues wgmma (Hopper warpgroup MMA).

The compiler cannot run in this pytest process (conftest sets TRITON_INTERPRET, which makes
kernels interpreted), so compilation runs in a subprocess without it, in a process pool.

* `test_compile_covering_set` (default): every (arch, dtype, head dim) with all of its
  configurations (the autotune candidates and the split-K one) and the combine kernel,
  cycling the mask kind, GQA group and state mode through them so that every value of each
  appears on both archs: 64 compilations, about 70 s on 2 cores with a cold Triton cache
  (seconds when warm). Those constexprs change masks and index arithmetic,
  not tile shapes, stages or dtypes, which decide shared memory and the MMA kind.
* `test_compile_full_matrix` (slow): the full cross product (dtypes x head dims 64/128/256
  x causal or not x groups 1/4/8 x prefill/decode x fresh or resumed state, both archs),
  about 530 unique compilations; about 10 minutes on 2 cores when Triton's cache is cold.
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
from longctx.kernels.triton_aot import DTYPES as DTYPES_TORCH, TARGETS, Case  # noqa: E402
from longctx.kernels.triton_attention import split_config, tune_configs  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DTYPES = ("bf16", "fp16", "fp32")
HEAD_DIMS = (64, 128, 256)
GROUPS = (1, 4, 8)


def covering_cases():
    """Every (arch, dtype, head dim) at prefill and decode shape, with the mask kind, group
    and state mode cycling through them."""
    cases = []
    for arch in (80, 90):
        for index, (dtype, head_dim) in enumerate(itertools.product(DTYPES, HEAD_DIMS)):
            for shape in ("prefill", "decode"):
                cases.append(dict(arch=arch, dtype=dtype, head_dim=head_dim, group=GROUPS[index % 3],
                                  causal=index % 2 == 0, shape=shape, resume=(index + arch) % 2 == 1))
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


def check_records(records):
    assert records, "nothing was compiled"
    too_big = [r for r in records if r["shared_bytes"] > r["shared_limit"]]
    assert not too_big, f"shared memory over the part's limit: {too_big}"
    no_wgmma = [r for r in records if r["kernel"] == "_attention_fwd_kernel" and r["case"]["arch"] == 90
                and r["case"]["dtype"] != "fp32" and not r["wgmma"]]
    assert not no_wgmma, f"Hopper 16-bit builds without wgmma: {no_wgmma}"


def test_covering_set_covers_every_value():
    """The default set reaches every dtype, head dim, group, mask kind, shape and state mode on
    both archs (so a value that fails to compile anywhere cannot hide until the slow test)."""
    cases = covering_cases()
    for arch in (80, 90):
        mine = [c for c in cases if c["arch"] == arch]
        for field, values in (("dtype", DTYPES), ("head_dim", HEAD_DIMS), ("group", GROUPS),
                              ("causal", (True, False)), ("shape", ("prefill", "decode")), ("resume", (False, True))):
            assert {c[field] for c in mine} == set(values), (arch, field)


def test_compile_covering_set():
    records = compile_in_subprocess([], stdin=json.dumps(covering_cases()))
    check_records(records)
    # Every configuration of every (arch, dtype, head dim) the wrapper can choose was built.
    built = {(r["case"]["arch"], r["case"]["dtype"], r["case"]["head_dim"], r["config"]["BLOCK_M"],
              r["config"]["BLOCK_N"], r["config"]["num_warps"], r["config"]["num_stages"])
             for r in records if r["kernel"] == "_attention_fwd_kernel"}
    wanted = set()
    for arch, dtype, head_dim in itertools.product((80, 90), DTYPES, HEAD_DIMS):
        for config in _choosable_configs(arch, dtype, head_dim):
            wanted.add((arch, dtype, head_dim, config["BLOCK_M"], config["BLOCK_N"], config["num_warps"],
                        config["num_stages"]))
    assert wanted <= built, sorted(wanted - built)
    assert any(r["kernel"] == "_combine_splits_kernel" for r in records)


def _choosable_configs(arch, dtype, head_dim):
    """The main-kernel configurations the wrapper may pick, from its own functions."""
    target = TARGETS[arch]
    return [*tune_configs(target, DTYPES_TORCH[dtype], head_dim, head_dim),
            split_config(target, DTYPES_TORCH[dtype], head_dim, head_dim)]


@pytest.mark.slow
def test_compile_full_matrix():
    records = compile_in_subprocess(["--full"])
    check_records(records)
    assert len(records) >= 400


def test_cases_are_plain_data():
    """The case dicts are exactly the fields of the Case the subprocess builds from them."""
    fields = {f.name for f in dataclasses.fields(Case)}
    assert all(set(case) == fields for case in covering_cases())
