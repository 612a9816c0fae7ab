"""Fuzzed exactness: every exact method, on random shapes, lengths, worker counts and layouts,
equals the single-process dense run; APB's exact corner cases too.

Each case runs the whole engine (plan, prefill, communication, query pass, greedy decoding) on
`world` worker threads of this process (`helpers.run_workers`, an in-process Comm), so a case
costs no process start-up. Drawn: document length 1..4096 (mostly short: cases stay cheap),
workers 1..8, attention heads and KV heads (GQA 1:1 .. 8:1), head dimension 8..64, method,
layout (contiguous, zigzag, striped; burst's double ring), uneven block sizes (the
tests/plugins/uneven.py plug-ins), model family. Tolerance (fp32): relative error of the final
hidden states of every document and question token <= 1e-4, identical greedy tokens.

A failure prints hypothesis's falsifying example, whose `seed` draws the token ids: the case is
replayed exactly by `@example(...)` with those arguments.
"""

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import relative_error, run_workers
from longctx.comm import ProcessGroupComm
from longctx.compare import random_prompt
from longctx.config import RunConfig
from longctx.engine import Engine, Request
from longctx.models import load_model
from longctx.models.tiny import make_tiny_model

TOLERANCE = 1e-4
NEW_TOKENS = 3
EXACT_CASES = 170  # with APB_CASES: over 200 fuzzed engine runs per CI run
APB_CASES = 40


def fuzz_settings(cases):
    """Hypothesis settings of a fuzz test running `cases` examples (no deadline: cases are slow)."""
    return settings(max_examples=cases, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# (query heads, KV heads, head dim): GQA 1:1 .. 8:1, head dims 8 .. 64
SHAPES = [(1, 1, 64), (2, 1, 32), (2, 2, 16), (4, 1, 16), (4, 2, 16), (4, 4, 8), (8, 1, 8), (8, 2, 8),
          (8, 4, 16), (8, 8, 8)]
FAMILIES = ["llama", "qwen2", "mistral"]


@pytest.fixture(scope="session")
def fuzz_root(tmp_path_factory):
    """Directory the fuzzed models are written to (once per shape and family)."""
    return str(tmp_path_factory.mktemp("fuzz-models"))


@functools.lru_cache(maxsize=None)
def fuzz_model(root, family, heads, kv_heads, head_dim):
    """(model dir, loaded fp32 model) of a 2-layer random model of this shape, written once per session."""
    path = f"{root}/{family}-h{heads}-kv{kv_heads}-d{head_dim}"
    make_tiny_model(path, family, hidden=heads * head_dim, heads=heads, kv_heads=kv_heads,
                    intermediate=2 * heads * head_dim, seed=heads * 100 + kv_heads * 10 + head_dim)
    return path, load_model(path, torch.device("cpu"), torch.float32)


@functools.lru_cache(maxsize=64)
def dense_reference(path, doc_ids, query_ids):
    """Single-process dense engine result with hidden states (cached: cases share references)."""
    _, model = fuzz_model(*_key(path))
    engine = Engine(model, ProcessGroupComm(), RunConfig(model=path, method="dense", nproc=1), torch.device("cpu"))
    return engine.run(Request(list(doc_ids), list(query_ids), NEW_TOKENS, "dense", True))


def _key(path):
    root, _, name = path.rpartition("/")
    family, heads, kv_heads, head_dim = name.split("-")
    return root, family, int(heads[1:]), int(kv_heads[2:]), int(head_dim[1:])


@st.composite
def exact_cases(draw):
    """(method, world, RunConfig options, document length): a valid combination of each."""
    heads, kv_heads, head_dim = draw(st.sampled_from(SHAPES))
    world = draw(st.integers(1, 8))
    method = draw(st.sampled_from(["ring", "burst", "ulysses", "allgather", "uneven-ring", "uneven-ulysses",
                                   "uneven-allgather"]))
    options = {}
    if method.endswith("ulysses"):
        divisors = [w for w in range(1, 9) if heads % w == 0 and ((heads // w) % (heads // kv_heads) == 0
                                                                  or (heads // kv_heads) % (heads // w) == 0)]
        world = draw(st.sampled_from(divisors))
    if method in ("ring", "burst", "ulysses"):
        options["balance"] = draw(st.sampled_from(["equal", "auto"]))
    if method == "burst":
        options["layout"] = draw(st.sampled_from(["contiguous", "zigzag", "striped"]))
        inner = draw(st.sampled_from([0] + [size for size in (2, 4) if world % size == 0 and size < world]))
        if inner:
            options["intra_size"] = inner
    if method.startswith("uneven"):
        options["uneven_seed"] = draw(st.integers(0, 1000))
        method = {"uneven-ring": "plugins.uneven:UnevenRing", "uneven-ulysses": "plugins.uneven:UnevenUlysses",
                  "uneven-allgather": "plugins.uneven:UnevenAllGather"}[method]
    zigzag = options.get("layout") == "zigzag" or method == "allgather"  # allgather's default layout
    shortest = 2 * world if zigzag else world + (1 if "uneven" in method else 0)
    doc_len = draw(st.one_of(st.integers(1, 300), st.integers(1, 4096)).map(lambda n: max(n, shortest)))
    return (heads, kv_heads, head_dim), method, world, options, doc_len


def check_equals_dense(root, family, shape, method, world, options, doc_len, query_len, seed):
    """Run `method` on `world` threads and compare with the dense reference (tolerance above)."""
    path, model = fuzz_model(root, family, *shape)
    doc_ids, query_ids = random_prompt(256, doc_len, query_len, seed=seed)
    reference = dense_reference(path, tuple(doc_ids), tuple(query_ids))
    config = RunConfig(model=path, method=method, **options)
    result = run_workers(model, config, Request(doc_ids, query_ids, NEW_TOKENS, method, True), world)
    error = relative_error(result, reference)
    assert error <= TOLERANCE, f"relative error {error:.2e}"
    assert result.tokens == reference.tokens
    return result


@fuzz_settings(EXACT_CASES)
@given(case=exact_cases(), family=st.sampled_from(FAMILIES), query_len=st.integers(1, 12),
       seed=st.integers(0, 2**31 - 1))
def test_exact_methods_equal_dense(fuzz_root, case, family, query_len, seed):
    shape, method, world, options, doc_len = case
    result = check_equals_dense(fuzz_root, family, shape, method, world, options, doc_len, query_len, seed)
    assert sum(host["tokens"] for host in result.plan["hosts"]) == doc_len


@fuzz_settings(APB_CASES)
@given(shape=st.sampled_from(SHAPES), family=st.sampled_from(FAMILIES), world=st.integers(1, 8),
       one_host=st.booleans(), doc_len=st.integers(1, 600), query_len=st.integers(1, 12),
       seed=st.integers(0, 2**31 - 1))
def test_apb_exact_corners_equal_dense(fuzz_root, shape, family, world, one_host, doc_len, query_len, seed):
    """APB on one host, or with no anchor and every earlier block passed whole, is exact."""
    world = 1 if one_host else world
    options = {} if one_host else {"anchor_len": 0, "passing_ratio": 1.0}
    check_equals_dense(fuzz_root, family, shape, "apb", world, options, max(doc_len, world), query_len, seed)
