"""Plant a known bug in a scratch copy of the repository and run the tests that must catch it.

    .venv/bin/python tests/plant_bugs.py                 # list the bugs
    .venv/bin/python tests/plant_bugs.py anchor-rule     # plant one, run its tests, report
    .venv/bin/python tests/plant_bugs.py --all           # every bug, one after the other
    .venv/bin/python tests/plant_bugs.py anchor-rule --tests tests/test_apb_inprocess.py   # other tests

The working tree is never touched: the tracked and untracked (not ignored) files are copied to
a temporary directory, one exact line edit is applied there (it must match exactly once), and
pytest runs there with `-x` on the bug's test files (the copy first on PYTHONPATH, so worker
processes import it too). The report names the first failing test and its own duration (from
pytest's JUnit XML) and the wall time of the run, import and collection included. A bug that
no test catches is reported as "NOT CAUGHT" and the exit status is 1.
`tests/test_plant_bugs.py` checks that every edit still applies to the current source.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Bug:
    """One planted bug: in `path`, `old` (matching exactly once) becomes `new`; `tests` must catch it."""

    what: str
    path: str
    old: str
    new: str
    tests: tuple


BUGS = {
    "spava-nz-passing": Bug(
        "spava --layout contiguous (the reference's nz) passes l_p per block instead of 2 l_p",
        "spava/layout.py", "sends, received = passing_table(block_sizes, sizes.passing if zigzag else 2 * sizes.passing)",
        "sends, received = passing_table(block_sizes, sizes.passing)", ("tests/test_spava.py",)),
    "spava-size-rounding": Bug(
        "spava's default anchor / l_p rounded to the nearest multiple of 128 instead of up (the reference's ceil)",
        "spava/layout.py", "    return tile * math.ceil((doc_len // divisor) / tile)",
        "    return tile * round((doc_len // divisor) / tile)", ("tests/test_spava.py",)),
    "spava-nf-question": Bug(
        "spava --no-fused-query (the reference's nf) still feeds the question into the prefill",
        "spava/method.py", "        if not self.options.question_in_prefill:", "        if False:",
        ("tests/test_spava.py",)),
    "anchor-rule": Bug(
        "APB's anchor rule dropped: anchor rows see the passing block (prefix_len 0 where APB builds its mask)",
        "apb/method.py", "prefix_len=passing_k.shape[2] if call.anchor_len else 0", "prefix_len=0",
        ("tests/test_approx_reference.py",)),
    "fused-split": Bug(
        "fused path: the rows after the anchor rows keep the first row's causal offset (misaligned split)",
        "longctx/kernels/fused.py", "None if offset is None else offset + anchor_rows, bottom_right)",
        "None if offset is None else offset, bottom_right)", ("tests/test_kernels_fused.py",)),
    "fused-square": Bug(
        "fused path: a top-left op's causal piece one key wider than square (its diagonal then differs)",
        "longctx/kernels/fused.py", "(key_lo + offset, key_lo + offset + diagonal), True)",
        "(key_lo + offset, min(key_hi, key_lo + offset + diagonal + 1)), True)", ("tests/test_kernels_fused.py",)),
    "efficient-lse": Bug(
        "the CUDA efficient op's log-sum-exp used with its padding rows (not cut to the query rows)",
        "longctx/kernels/fused.py", "return out, lse[..., :q.shape[2]]  # padded", "return out, lse  # padded",
        ("tests/test_kernels_fused.py",)),
    "tma-offset": Bug(
        "Triton kernel, tensor-descriptor path: K read one row late",
        "longctx/kernels/triton_kernels.py", "k = tl.trans(k_src.load([block_start, 0]))",
        "k = tl.trans(k_src.load([block_start + 1, 0]))", ("tests/test_triton_kernel.py",)),
    "spilling-config": Bug(
        "Triton launch plan: a sm_90 head-dim-128 candidate that spills registers (128 x 128, 2 stages)",
        "longctx/kernels/triton_launch.py", "_config(128, 128, 8, 1)", "_config(128, 128, 8, 2)",
        ("tests/test_triton_compile.py",)),
    "striped-pairing": Bug(
        "striped ring pairing off by one: a key stripe starting with the query stripe is shifted too",
        "burst/blocks.py", "shift = 1 if k_span.start > q_span.start else 0",
        "shift = 1 if k_span.start >= q_span.start else 0", ("tests/test_blocks.py",)),
    "spava-anchor": Bug(
        "Spava's anchor rows see the passed keys of the first block",
        "spava/method.py", "prefix_len=call.passing if call.anchor_len else 0, scale=scale", "prefix_len=0, scale=scale",
        ("tests/test_approx_reference.py",)),
    "spava-select-lowest": Bug(
        "Spava's blocks pass the keys the question scores lowest instead of highest",
        "spava/select.py", "    return select_by_question(question_q, keys, sends)",
        "    return select_by_question(-question_q, keys, sends)", ("tests/test_spava_accuracy.py",)),
    "query-position": Bug(
        "the query pass and decoding run one position late (shared by dense and every method)",
        "longctx/engine.py", "positions = list(range(first_position, first_position + len(ids)))",
        "positions = list(range(first_position + 1, first_position + 1 + len(ids)))",
        ("tests/test_dense_transformers.py",)),
    "decode-causal": Bug(
        "decode_attention: hosts that do not hold the new tokens' keys attend causally too",
        "longctx/method.py", "ctx.kernels.attention(q, cache_k, cache_v, causal=owner, scale=scale)",
        "ctx.kernels.attention(q, cache_k, cache_v, causal=True, scale=scale)", ("tests/test_approx_reference.py",)),
    "memory-check": Bug(
        "the request path no longer checks the memory estimate (the refusal's call deleted)",
        "longctx/request.py",
        "check_memory(runner.planner, plan, self.model_config.vocab_size, max_new_tokens,\n"
        "                         resolve_device_type(self.worker_config.device), local_workers=self.local_workers)",
        "None", ("tests/test_memory.py",)),
    "rope-scaling-dropped": Bug(
        "workers build the model from its saved config: --rope-scaling reaches the checks, not the rotary embedding",
        "longctx/models/loading.py", "from_pretrained(path, config=config, dtype=dtype,", "from_pretrained(path, dtype=dtype,",
        ("tests/test_rope_scaling.py",)),
    "sigint-ignored": Bug(
        "the local launcher ignores SIGINT while it spawns (the old way): a Ctrl-C then is lost",
        "launch/local.py", "previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))",
        "previous = signal.signal(signal.SIGINT, signal.SIG_IGN)", ("tests/test_interrupt_startup.py",)),
    "sinks-dropped": Bug(
        "the model's attention sinks (gpt-oss) dropped: the method's output returned as if it had none",
        "longctx/engine.py", "        if call.sinks is None:\n            return out", "        return out",
        ("tests/test_attention_features.py",)),
    "softcap-dropped": Bug(
        "logit soft-capping (Gemma 2) not passed to the kernel by ctx.kernels.attention",
        "longctx/features.py", "scale=scale,\n                                 softcap=self.softcap, backend=self.backend)",
        "scale=scale,\n                                 softcap=None, backend=self.backend)",
        ("tests/test_attention_features.py",)),
    "option-by-name": Bug(
        "options stored by their name, not their declaration: apb's and spava's --anchor-len one field again",
        "longctx/options.py", 'return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.name}"',
        "return self.name", ("tests/test_options.py",)),
    "length-check": Bug(
        "the request path no longer checks the length against the model's positions",
        "longctx/request.py", "check_lengths(self.position_limit, len(doc_ids), len(query_ids), max_new_tokens)",
        "None", ("tests/test_hostile_input.py",)),
}


def source_files(repo=REPO):
    """Tracked and untracked, not ignored, files of `repo` (relative paths)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, check=True,
                            capture_output=True, text=True).stdout
    return [path for path in listed.split("\0") if path and os.path.isfile(os.path.join(repo, path))]


def planted_text(bug, repo=REPO):
    """The text of `bug.path` with the bug planted; ValueError unless `bug.old` occurs exactly once."""
    with open(os.path.join(repo, bug.path), encoding="utf-8") as handle:
        text = handle.read()
    count = text.count(bug.old)
    if count != 1:
        raise ValueError(f"{bug.path}: {bug.old!r} occurs {count} times (expected once)")
    return text.replace(bug.old, bug.new)


def run(name, bug, keep=False, tests=None):
    """Plant `bug` in a scratch copy, run its tests (or `tests`); returns (caught, report line)."""
    tests = tests or bug.tests
    scratch = tempfile.mkdtemp(prefix=f"longctx-bug-{name}-")
    try:
        for path in source_files():
            target = os.path.join(scratch, path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.join(REPO, path), target)
        with open(os.path.join(scratch, bug.path), "w", encoding="utf-8") as handle:
            handle.write(planted_text(bug))
        report = os.path.join(scratch, "junit.xml")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([scratch, os.path.join(scratch, "tests")]))
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                               f"--junitxml={report}", *tests], cwd=scratch, env=env, capture_output=True,
                              text=True)
        wall = time.monotonic() - started
        failed = _first_failure(report)
        if failed is None:
            return False, f"{name}: NOT CAUGHT by {' '.join(tests)} ({wall:.0f} s wall; exit {proc.returncode})"
        test, seconds = failed
        return True, f"{name}: caught by {test} in {seconds:.1f} s ({wall:.0f} s wall with start-up)"
    finally:
        if keep:
            print(f"scratch copy kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _first_failure(report):
    """(test id, seconds) of the first failed or erroring test in a JUnit XML report, or None."""
    if not os.path.exists(report):
        return None
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            module = case.get("classname", "").replace(".", "/")
            return f"{module}.py::{case.get('name')}", float(case.get("time", 0))
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bugs", nargs="*", help=f"bugs to plant ({', '.join(BUGS)})")
    parser.add_argument("--all", action="store_true", help="plant every bug, one at a time")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies (their paths are printed)")
    parser.add_argument("--tests", nargs="+", help="test files or ids to run instead of the bug's own")
    args = parser.parse_args(argv)
    names = list(BUGS) if args.all else args.bugs
    if not names:
        for name, bug in BUGS.items():
            print(f"{name:16} {bug.path}: {bug.what}")
        return 0
    unknown = [name for name in names if name not in BUGS]
    if unknown:
        parser.error(f"unknown bug {unknown[0]!r}; choose from {', '.join(BUGS)}")
    missed = 0
    for name in names:
        caught, line = run(name, BUGS[name], keep=args.keep, tests=args.tests)
        missed += not caught
        print(line, flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
