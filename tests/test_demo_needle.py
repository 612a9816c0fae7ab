"""The trained-model demo's pieces that need no workers: the shipped data and the plan line."""

import os

import pytest

from longctx.config import RunConfig
from longctx.demo import SHIPPED_DATA, SHIPPED_MODEL, describe_plan, load_shipped_question
from longctx.registry import get_method


def test_shipped_question_matches_haystack():
    document, spec = load_shipped_question(SHIPPED_DATA)
    assert not document.endswith("\n") and spec["question"] and spec["answer"]
    assert f"is {spec['answer']}." in document  # the needle that answers the question is there


def test_plan_line_names_sizes():
    plan = get_method("burst", RunConfig(method="burst", nproc=4)).plan(4000, 20, 4).summary()
    line = describe_plan(plan)
    assert "tokens per worker 1000/1000/1000/1000" in line and "anchor" not in line
    plan["anchor_len"], plan["passing_len"], plan["compressor"] = 256, 128, "query"
    line = describe_plan(plan)
    assert "anchor 256" in line and "passing 128" in line and "compressor query" in line


@pytest.mark.skipif(not os.path.isdir(SHIPPED_MODEL), reason="examples/models/needle-llama not trained yet")
def test_shipped_answer_is_in_the_needle_model_vocabulary():
    from longctx.models import load_tokenizer

    tokenizer = load_tokenizer(SHIPPED_MODEL)
    _, spec = load_shipped_question(SHIPPED_DATA)
    ids = tokenizer(" " + str(spec["answer"]), add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids, "regenerate examples/data with the model's tokenizer"
