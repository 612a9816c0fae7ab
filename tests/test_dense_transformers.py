"""longctx's dense run (the exactness reference of every other test) against transformers' own
forward of the same model, for each text family: the final hidden states and the logits of
every document and question row within 1e-5 (fp32), and the greedy continuation, with
transformers recomputing the whole sequence at every step (no cache, its eager attention and
its own causal mask). A bug that dense shares with every method (positions of the query pass
or of decoding, the decode attention, the cache) shows here."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import dense_result
from longctx.compare import random_prompt

FAMILIES = ("llama", "qwen2", "mistral", "qwen3")
TOLERANCE = 1e-5
NEW_TOKENS = 6


def transformers_forward(model, ids):
    """(final hidden states [S, d], logits [S, vocab]) of transformers' forward over `ids`."""
    with torch.no_grad():
        output = model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    return output.hidden_states[-1][0], output.logits[0]


def transformers_greedy(model, ids, steps):
    """Greedy continuation by transformers, the whole sequence recomputed each step (no cache)."""
    tokens = []
    for _ in range(steps):
        _, logits = transformers_forward(model, list(ids) + tokens)
        tokens.append(int(logits[-1].argmax()))
    return tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_equals_transformers_forward(tiny_model, family):
    path = tiny_model(family)
    doc, question = random_prompt(256, 190, 7, seed=len(family))
    ours = dense_result(path, doc, question, max_new_tokens=NEW_TOKENS)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    hidden, logits = transformers_forward(model, doc + question)
    assert ours.doc_hidden.shape == (len(doc), model.config.hidden_size)
    ours_hidden = torch.cat([ours.doc_hidden, ours.query_hidden])
    torch.testing.assert_close(ours_hidden, hidden, rtol=0, atol=TOLERANCE)
    with torch.no_grad():
        ours_logits = model.lm_head(ours_hidden)
    torch.testing.assert_close(ours_logits, logits, rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(ours.first_logits, logits[-1], rtol=0, atol=TOLERANCE)
    assert ours.tokens == transformers_greedy(model, doc + question, NEW_TOKENS)
