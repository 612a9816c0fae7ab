"""Exact methods on 1-4 local workers equal the single-process dense reference.

Tolerance (fp32): relative error of the final hidden states of every document and question
token <= 1e-4, and identical greedy tokens.
"""

import pytest

from helpers import dense_result, relative_error
from longctx.api import LongContextLM
from longctx.compare import random_prompt
from longctx.errors import LongCtxError

TOLERANCE = 1e-4

# (model, nproc, length, methods, extra RunConfig options)
CASES = [
    ("llama", 1, 61, ["ring", "burst", "ulysses", "allgather"], {}),
    ("llama", 2, 203, ["ring", "burst", "ulysses", "allgather"], {}),
    ("llama", 3, 203, ["ring", "burst", "allgather"], {}),
    ("llama-gqa4", 4, 301, ["ring", "burst", "ulysses", "allgather"], {}),
    ("llama-mha", 2, 150, ["burst", "ulysses"], {}),
    ("qwen2", 2, 177, ["ring", "burst", "ulysses", "allgather"], {}),
    ("mistral", 3, 190, ["ring", "burst", "allgather"], {}),
    ("llama", 4, 255, ["burst"], {"layout": "striped"}),
    ("llama", 4, 254, ["burst"], {"intra_size": 2}),
]


@pytest.mark.parametrize("model_name,nproc,length,methods,options", CASES,
                         ids=[f"{c[0]}-p{c[1]}-n{c[2]}-{'-'.join(f'{k}={v}' for k, v in c[4].items()) or 'default'}"
                              for c in CASES])
def test_methods_match_dense(tiny_model, model_name, nproc, length, methods, options):
    model_dir = tiny_model(model_name)
    doc_ids, query_ids = random_prompt(256, length, 5, seed=length)
    reference = dense_result(model_dir, doc_ids, query_ids)
    with LongContextLM(model_dir, method=methods[0], nproc=nproc, **options) as lm:
        for method in methods:
            result = lm.run_ids(doc_ids, query_ids, max_new_tokens=6, method=method, return_hidden=True)
            assert relative_error(result, reference) <= TOLERANCE, method
            assert result.tokens == reference.tokens, method
            assert result.plan["world"] == nproc


def test_pool_serves_several_requests_and_rejects_bad_ones(tiny_model):
    model_dir = tiny_model("llama")
    with LongContextLM(model_dir, method="burst", nproc=3) as lm:
        with pytest.raises(LongCtxError, match="divide the attention heads"):
            lm.run_ids([5] * 50, [6], method="ulysses")
        with pytest.raises(LongCtxError, match="too short"):
            lm.run_ids([5] * 4, [6])
        first = lm.generate("a fairly short document " * 5, "and a question?", max_new_tokens=3)
        second = lm.generate("another document " * 9, "", max_new_tokens=2)
    assert len(first.tokens) == 3 and len(second.tokens) == 2
    assert first.plan["layout"] == "zigzag" and first.nproc == 3
