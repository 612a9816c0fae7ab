"""The distributed document cache (`longctx.doc_cache`): a follow-up on a cached document gives
what a fresh request of the same tokens gives.

Tolerance (fp32): identical greedy tokens and first-position logits within 1e-5 relative of
the same method's fresh request (the reference runs with `return_hidden`, which the cache never
serves). Every exact method and Star, on 1-4 workers: a follow-up question, a two-turn
extension of the context (each turn resuming the previous), and a document evicted by the
budget and prefilled again. APB misses on a new question, saying why, and hits on the same one.
"""

import pytest
import torch

from longctx.api import LongContextLM
from longctx.compare import random_prompt
from longctx.doc_cache import DocumentIndex, common_prefix

TOLERANCE = 1e-5
METHODS = {1: ["dense", "star"], 2: ["ring", "burst", "star"], 3: ["allgather", "burst", "star"],
           4: ["ulysses", "ring", "star"]}


def fresh(lm, doc_ids, query_ids, method):
    """The method's own fresh run of these tokens (uncached: hidden states asked for)."""
    return lm.run_ids(doc_ids, query_ids, max_new_tokens=4, method=method, return_hidden=True)


def assert_same(result, reference):
    assert result.tokens == reference.tokens
    error = (result.first_logits - reference.first_logits).norm() / reference.first_logits.norm()
    assert float(error) <= TOLERANCE


@pytest.mark.parametrize("nproc", [1, 2, 3, 4])
def test_follow_up_equals_fresh(tiny_model, nproc):
    """Through the Python API on worker threads (`plugins.threads`: the engines keep
    their caches between requests as worker processes do)."""
    model_dir = tiny_model("llama")
    doc, first = random_prompt(256, 96 + 7 * nproc, 5, seed=nproc)
    _, second = random_prompt(256, 4, 6, seed=50 + nproc)
    turn, third = random_prompt(256, 9, 4, seed=80 + nproc)
    turn2, fourth = random_prompt(256, 7, 5, seed=90 + nproc)
    with LongContextLM(model_dir, method=METHODS[nproc][0], nproc=nproc, cache_gib=1,
                       launcher="plugins.threads:ThreadLauncher") as lm:
        for method in METHODS[nproc]:
            missed = lm.generate_prepared(lm.prepare_ids(doc, first, 4, method))
            assert (missed.cache, missed.cached_tokens) == ("new", 0)
            hit = lm.run_ids(doc, second, 4, method)
            assert lm.documents.counters["tokens_reused"] >= len(doc)
            assert_same(hit, fresh(lm, doc, second, method))
            # a chat: each turn's context extends the previous one, which is resumed and extended
            lm.run_ids(doc + first + turn, third, 4, method)
            extended = lm.generate_prepared(lm.prepare_ids(doc + first + turn + third + turn2, fourth, 4, method))
            assert (extended.cache, extended.cached_tokens) == ("hit", len(doc + first + turn))
            if method == "star":  # Star's context phase is the first document; every later token ran exactly
                reference = fresh(lm, doc, first + turn + third + turn2 + fourth, method)
            else:
                reference = fresh(lm, doc + first + turn + third + turn2, fourth, method)
            assert_same(lm.run_ids(doc + first + turn + third + turn2, fourth, 4, method), reference)


def test_eviction_then_prefill_again(tiny_model):
    model_dir = tiny_model("llama")
    doc_a, question = random_prompt(256, 120, 5, seed=7)
    doc_b, _ = random_prompt(256, 120, 5, seed=8)
    with LongContextLM(model_dir, method="burst", nproc=2, cache_gib=1,
                       launcher="plugins.threads:ThreadLauncher") as lm:
        index = lm.documents
        index.budget_bytes = index.row_bytes * 100  # one 120-token document (60 tokens a worker), not two
        lm.run_ids(doc_a, question, 4)
        assert lm.generate_prepared(lm.prepare_ids(doc_b, question, 4)).cache == "new"
        assert index.counters["evictions"] == 1
        again = lm.generate_prepared(lm.prepare_ids(doc_a, question, 4))
        assert (again.cache, again.cached_tokens) == ("evicted", 0)
        assert_same(lm.run_ids(doc_a, question, 4), fresh(lm, doc_a, question, "burst"))
        assert len(index.entries) == 1


def test_apb_hits_only_on_the_same_question(tiny_model):
    model_dir = tiny_model("llama")
    doc, question = random_prompt(256, 160, 5, seed=11)
    _, other = random_prompt(256, 4, 5, seed=12)
    with LongContextLM(model_dir, method="apb", nproc=2, cache_gib=1,
                       launcher="plugins.threads:ThreadLauncher") as lm:
        lm.run_ids(doc, question, 4)
        missed = lm.generate_prepared(lm.prepare_ids(doc, other, 4))
        assert (missed.cache, missed.cached_tokens) == ("question", 0)
        assert lm.documents.counters["misses"]["question"] == 1
        same = lm.generate_prepared(lm.prepare_ids(doc, question, 4))
        assert (same.cache, same.cached_tokens) == ("hit", len(doc))
        assert lm.generate_prepared(lm.prepare_ids(doc, other, 4)).cache == "hit"  # both questions are cached
        assert same.tokens == fresh(lm, doc, question, "apb").tokens


def test_index_never_evicts_the_entry_in_use():
    index = DocumentIndex(budget_bytes=100, row_bytes=1)
    plan = _plan(60)
    scope = ("m",)
    first = index.lookup(scope, list(range(60)), [1], plan, False)
    index.finish(first, list(range(60)), [1], ok=True)
    # resuming the entry and growing it past the budget: nothing else to evict, so it keeps only what it had
    grown = index.lookup(scope, list(range(60)) + list(range(100, 150)), [1], _plan(110), False)
    assert grown.cached_tokens == 60 and grown.step.keep_len == 60 and grown.step.evict == ()
    index.finish(grown, list(range(60)) + list(range(100, 150)), [1], ok=True)
    assert len(index.entries[first.entry.id].tokens) == 60
    other = index.lookup(scope, list(range(500, 560)), [1], _plan(60), False)
    assert other.step.evict == (first.entry.id,) and other.reason == "new"
    index.finish(other, list(range(500, 560)), [1], ok=False)
    assert not index.entries


def test_common_prefix():
    assert common_prefix([1, 2, 3, 4], [1, 2, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix(list(range(1000)), list(range(999)) + [0]) == 999


def _plan(doc_len):
    from longctx.plan import HostPlan, Plan, Span

    return Plan("dense", doc_len, 1, 1, [HostPlan(0, (Span(0, doc_len),))])


def test_sampling_is_reproducible_and_greedy_at_zero():
    from longctx.sampling import Sampler, Sampling

    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    draws = [Sampler(Sampling(1.0, 0.9, seed=5)) for _ in range(2)]
    assert [draws[0](logits) for _ in range(8)] == [draws[1](logits) for _ in range(8)]
    assert Sampler(None)(logits) == int(torch.argmax(logits))
    assert Sampler(Sampling(1.0, 1e-6, seed=1))(logits) == int(torch.argmax(logits))
