"""APB and Star on 1-4 simulated workers in one process (threads), against dense.

Each simulated worker is a thread with its own copy of the model and an in-process `Comm`
whose collectives meet at a barrier, so the full engine (plan, prefill, all-gathers, query
pass, decoding) runs without process start-up cost. The real multi-process path is covered
by tests/test_apb_workers.py.
"""

import threading

import pytest
import torch

from apb.method import APBAttention
from apb.train_heads import train_heads
from helpers import dense_result, relative_error, run_workers
from longctx.compare import random_prompt
from longctx.config import RunConfig
from longctx.engine import Request
from longctx.features import Kernels
from longctx.kernels import attention
from longctx.models import load_model

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def models(tiny_model):
    """name -> (model dir, loaded fp32 model)."""
    loaded = {}
    for name in ("llama", "qwen2"):
        path = tiny_model(name)
        loaded[name] = (path, load_model(path, torch.device("cpu"), torch.float32))
    return loaded


def prompt(length, query_len=5):
    return random_prompt(256, length, query_len, seed=length)


@pytest.mark.parametrize("model_name", ["llama", "qwen2"])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_full_passing_without_anchor_equals_dense(models, model_name, world):
    path, model = models[model_name]
    doc, question = prompt(203 + world)
    reference = dense_result(path, doc, question)
    config = RunConfig(model=path, method="apb", anchor_len=0, passing_ratio=1.0, balance="equal")
    result = run_workers(model, config, Request(doc, question, 6, "apb", True), world)
    assert relative_error(result, reference) <= TOLERANCE
    assert result.tokens == reference.tokens
    if world > 1:
        sends = result.plan["passing_tokens"]
        assert sends == result.plan["block_sizes"][:-1] + [0]
        per_token = 2 * 2 * (64 // 4) * 4  # K and V, 2 KV heads, head dim 16, fp32
        assert result.stats.passing_bytes_per_layer == per_token * sum(sends)


@pytest.mark.parametrize("model_name", ["llama", "qwen2"])
@pytest.mark.parametrize("method,world,options", [
    ("apb", 1, {}), ("star", 1, {}), ("apb", 1, {"compressor": "random"}),
    ("star", 2, {"balance": "equal"}),  # two equal hosts: Star's default anchor is host 0's whole block: exact
])
def test_exact_special_cases(models, model_name, method, world, options):
    path, model = models[model_name]
    doc, question = prompt(190)
    reference = dense_result(path, doc, question)
    result = run_workers(model, RunConfig(model=path, method=method, **options),
                         Request(doc, question, 6, method, True), world)
    assert relative_error(result, reference) <= TOLERANCE
    assert result.tokens == reference.tokens


@pytest.mark.parametrize("compressor", ["query", "random", "retaining-heads"])
def test_compressors_run_and_report_sizes(models, tmp_path_factory, compressor):
    path, model = models["llama"]
    options = {"compressor": compressor, "balance": "equal"}
    if compressor == "retaining-heads":
        heads = str(tmp_path_factory.mktemp("heads") / "heads.safetensors")
        train_heads(path, ["a small text about apples and pears. " * 30], heads, seq_len=128, tail=16, hidden=16,
                    steps=5, device="cpu")
        options["retaining_heads"] = heads
    doc, question = prompt(401)
    result = run_workers(model, RunConfig(model=path, method="apb", **options), Request(doc, question, 4, "apb", True), 3)
    plan = result.plan
    assert plan["anchor_len"] == 33 and plan["passing_len"] == 16 and plan["block_sizes"] == [134, 134, 133]
    assert plan["passing_tokens"] == [16, 16, 0] and plan["compressor"] == compressor
    assert result.stats.passing_bytes_per_layer == 2 * 2 * 16 * 4 * 32
    assert len(result.tokens) == 4 and torch.isfinite(result.doc_hidden).all()


def test_query_compressor_without_anchor_uses_a_probe(models):
    path, model = models["qwen2"]
    doc, question = prompt(300)
    config = RunConfig(model=path, method="apb", anchor_len=0, passing_len=20)
    result = run_workers(model, config, Request(doc, question, 3, "apb", True), 3)
    assert result.plan["passing_tokens"] == [20, 20, 0] and not result.plan["question_in_anchor"]
    assert torch.isfinite(result.query_hidden).all()


def _spy_query_pass(monkeypatch):
    """Record, per (rank, layer), the query pass inputs, the cache before it and the output."""
    records, lock = {}, threading.Lock()
    original = APBAttention.decode_attention

    def spy(self, ctx, layer, q, k, v, scale):
        key = (ctx.rank, layer)
        first = key not in records
        cache_k, cache_v = ctx.cache.get(layer)
        snapshot = (cache_k.clone(), cache_v.clone()) if first else None
        out, lse = original(self, ctx, layer, q, k, v, scale)
        if first:
            with lock:
                records[key] = (q.clone(), k.clone(), v.clone(), *snapshot, out.clone(), scale)
        return out, lse

    monkeypatch.setattr(APBAttention, "decode_attention", spy)
    return records


@pytest.mark.parametrize("mistake", [False, True], ids=["engine", "causal-everywhere"])
def test_query_pass_equals_one_process_over_the_gathered_caches(models, monkeypatch, mistake):
    """Hosts without the question's keys must attend non-causally; the causal mistake is caught."""
    path, model = models["llama"]
    if mistake:  # the public-code bug: every host attends to its cache with the causal mask
        exact = Kernels.attention
        monkeypatch.setattr(Kernels, "attention", lambda self, *args, causal, **kw: exact(self, *args, causal=True, **kw))
    records = _spy_query_pass(monkeypatch)
    doc, question = prompt(300, query_len=6)
    world = 3
    run_workers(model, RunConfig(model=path, method="apb"), Request(doc, question, 1, "apb"), world)
    errors = []
    for layer in range(2):
        q, k, v, *_ = records[(world - 1, layer)]
        keys = torch.cat([records[(rank, layer)][3] for rank in range(world)] + [k], dim=2)
        values = torch.cat([records[(rank, layer)][4] for rank in range(world)] + [v], dim=2)
        expected, _ = attention(q, keys, values, causal=True, scale=records[(0, layer)][6])
        for rank in range(world):
            out = records[(rank, layer)][5]
            errors.append(float((out - expected).norm() / expected.norm()))
    if mistake:
        assert max(errors) > 1e-2
    else:
        assert max(errors) <= 1e-5
