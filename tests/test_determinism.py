"""Determinism: the same request gives byte-identical tokens and bitwise-equal hidden states (CPU),
run to run on one warm pool and on a fresh pool."""

import torch

from longctx.api import LongContextLM
from longctx.compare import random_prompt


def test_same_request_same_bits_on_a_warm_pool_and_a_fresh_one(tiny_model):
    path = tiny_model("llama")
    doc, question = random_prompt(256, 240, 5, seed=11)
    runs = []
    for _ in range(2):  # two pools: the second starts fresh processes
        with LongContextLM(path, method="burst", nproc=2) as lm:
            for method in ("burst", "apb", "burst"):  # another method in between leaves no trace
                runs.append((method, lm.run_ids(doc, question, max_new_tokens=5, method=method, return_hidden=True)))
    for method in ("burst", "apb"):
        same = [result for name, result in runs if name == method]
        first = same[0]
        for other in same[1:]:
            assert other.tokens == first.tokens, method
            assert torch.equal(other.doc_hidden, first.doc_hidden), method
            assert torch.equal(other.query_hidden, first.query_hidden), method
