"""The vt-model training script: what its attention loss names, and the grown model's parts
(no training)."""

import importlib.util
import os
import random
import sys

import pytest
import torch

from helpers import REPO
from longctx.eval import make_sample
from longctx.eval.tokenizer import build_tokenizer

EXAMPLES = os.path.join(REPO, "examples")
NEEDLE_MODEL = os.path.join(EXAMPLES, "models", "needle-llama")


def _load_script():
    sys.path.insert(0, EXAMPLES)
    spec = importlib.util.spec_from_file_location("train_vt_model", os.path.join(EXAMPLES, "train_vt_model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = _load_script()


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def words(tok, text):
    return tok.convert_ids_to_tokens(tok(text)["input_ids"])


@pytest.mark.parametrize("hops", [1, 2])
def test_annotate_names_each_lookup(tok, hops):
    text = ("The value of amber is 42. Ben walks. The value of moth is 17. The value of lizard is the value of "
            "amber. The value of goose is the value of moth. The value of spoon is the value of lizard.\n"
            "What is the value of spoon in the provided text? Answer: The value of spoon is 42")
    tokens = words(tok, text)
    pairs = train.annotate(tokens, hops)
    dot = [i for i, t in enumerate(tokens) if t == "."]
    value = {number: tokens.index(number) for number in ("42", "17")}  # the definitions' values
    question = len(tokens) - 2  # the final "is"
    lizard_dot, goose_dot, spoon_dot = dot[3], dot[4], dot[5]
    assert pairs[2] == [(lizard_dot, value["42"]), (goose_dot, value["17"])]  # copies of definitions
    if hops == 1:  # spoon is a second hop: this model has no layer for it, so nothing names it
        assert pairs == {2: pairs[2], 3: []}
    else:
        assert pairs[3] == [(spoon_dot, lizard_dot)]
        assert pairs[4] == [(question, spoon_dot)]


def test_annotate_on_a_generated_sample_finds_every_statement(tok):
    sample = make_sample("variable_tracking", 400, seed=3, index=0, num_hops=1)
    pairs = train.annotate(words(tok, sample.prompt + " " + sample.answer), 1)
    assert len(pairs[2]) == 2 and len(pairs[3]) == 1  # two chains' copies; the question


def test_recall_rows_ask_about_their_statements(tok):
    ids, labels = train.recall_batch(tok, random.Random(0), 3, hops=1)
    for row_ids, row_labels in zip(ids.tolist(), labels.tolist()):
        tokens = tok.convert_ids_to_tokens(row_ids)
        pairs = train.annotate(tokens, 1)
        asked = [t for t in row_labels if t != -100]
        assert len(pairs[3]) == len(asked) >= 4 and tok.unk_token_id not in row_ids


@pytest.mark.skipif(not os.path.isdir(NEEDLE_MODEL), reason="the needle model is not in this checkout")
def test_grown_model_keeps_the_needle_layers_and_builds_the_offset_head(tok):
    args = train.parse_args(["--init", NEEDLE_MODEL, "--hops", "2"])
    model = train.grow(args)
    from transformers import AutoModelForCausalLM

    needle = AutoModelForCausalLM.from_pretrained(NEEDLE_MODEL)
    assert model.config.num_hidden_layers == 5
    for grown in (2, 3, 4):
        assert torch.equal(model.model.layers[grown].mlp.up_proj.weight, needle.model.layers[1].mlp.up_proj.weight)
    assert not model.model.embed_tokens.weight.requires_grad
    tokens = words(tok, "The value of lizard is the value of amber. Ben walks slowly today.")
    with torch.no_grad():
        attention = model(torch.tensor([tok.convert_tokens_to_ids(tokens)]), output_attentions=True).attentions[1]
    dot = tokens.index(".")
    assert tokens[attention[0, 0, dot].argmax()] == "is" and attention[0, 0, dot, dot - 5] > 0.99
    assert (attention[0, 0].argmax(-1)[5:] == torch.arange(len(tokens) - 5)).all()  # every position: 5 back
