"""The needle-model training script's data and model-growing pieces (no training)."""

import importlib.util
import os
import random

import pytest
import torch

from helpers import REPO
from longctx.eval import vocab
from longctx.eval.tokenizer import build_tokenizer


def _load_script(path):
    spec = importlib.util.spec_from_file_location("train_needle_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = _load_script(os.path.join(REPO, "examples", "train_needle_model.py"))


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_grown_model_computes_what_the_checkpoint_did(tok):
    torch.manual_seed(0)
    small = train.build_model(train.parse_args(["--layers", "2"]), tok)
    grown = train.build_model(train.parse_args(["--layers", "4"]), tok)
    train.grow_from(grown, small.state_dict())
    ids = torch.randint(4, len(tok), (2, 40))
    with torch.no_grad():
        assert torch.allclose(small(ids).logits, grown(ids).logits, atol=1e-5)
    assert grown.model.layers[1].self_attn.o_proj.weight.abs().sum() == 0
    assert torch.equal(grown.model.layers[3].self_attn.q_proj.weight, small.model.layers[1].self_attn.q_proj.weight)


def test_grow_refuses_fewer_layers(tok):
    big = train.build_model(train.parse_args(["--layers", "3"]), tok)
    small = train.build_model(train.parse_args(["--layers", "2"]), tok)
    with pytest.raises(SystemExit, match="more than --layers 2"):
        train.grow_from(small, big.state_dict())


def test_batch_labels_are_answers_only_with_extra_and_reverse_questions(tok, monkeypatch):
    monkeypatch.setattr(train, "MIX", {task: float(task == "niah_multikey") for task in train.MIX})
    ids, labels = train.training_batch(tok, random.Random(0), 320, 2, seed=0, step=0, extra_questions=True,
                                       distractors=(3, 3), reverse_questions=True)
    assert tok.unk_token_id not in ids.tolist()[0]
    for row_ids, row_labels in zip(ids.tolist(), labels.tolist()):
        supervised = [t for t in row_labels if t != -100]
        words = tok.convert_ids_to_tokens(supervised)
        # 4 needles: the question plus 3 extra forward questions (values) and 4 reverse ones (keys)
        assert words.count("</s>") == 8
        answers = [w for w in words if w != "</s>"]
        assert sum(w.isdigit() for w in answers) == 4
        assert sum(w in vocab.KEYS for w in answers) == 4
        # labels are the input tokens themselves where set (answer_loss shifts them)
        assert all(t == row_ids[i] for i, t in enumerate(row_labels) if t != -100)


def test_lm_weight_adds_the_text_loss(tok, monkeypatch):
    monkeypatch.setattr(train, "MIX", {task: float(task == "niah_single") for task in train.MIX})
    torch.manual_seed(0)
    model = train.build_model(train.parse_args(["--layers", "1"]), tok)
    ids, labels = train.training_batch(tok, random.Random(1), 128, 2, seed=0, step=0)
    with torch.no_grad():
        answers = train.answer_loss(model, ids, labels, tok.pad_token_id)
        both = train.answer_loss(model, ids, labels, tok.pad_token_id, lm_weight=0.5)
        hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]
        text, tgt = ids[:, 1:], labels[:, 1:]
        rest = (tgt == -100) & (text != tok.pad_token_id)
        lm = torch.nn.functional.cross_entropy(model.lm_head(hidden[rest]), text[rest])
    assert torch.allclose(both, answers + 0.5 * lm, rtol=1e-5)


def test_grow_refuses_a_checkpoint_missing_weights(tok):
    small = train.build_model(train.parse_args(["--layers", "2"]), tok)
    state = {key: value for key, value in small.state_dict().items() if key != "model.norm.weight"}
    model = train.build_model(train.parse_args(["--layers", "3"]), tok)
    with pytest.raises(SystemExit, match="missing .*model.norm.weight"):
        train.grow_from(model, state)


def test_recall_batch_asks_values_forward_and_keys_in_reverse(tok):
    ids, labels = train.recall_batch(tok, random.Random(3), 8, needles=(3, 3), reverse=0.5)
    kinds = set()
    for row_ids, row_labels in zip(ids.tolist(), labels.tolist()):
        words = tok.convert_ids_to_tokens(row_ids)
        pairs = dict(zip(words[6:9 * 3:9], words[8:9 * 3:9]))  # needle i: "... for K is V ."
        assert len(pairs) == 3 and all(v.isdigit() for v in pairs.values())
        for i, label in enumerate(row_labels):
            if label == -100:
                continue
            assert label == row_ids[i]
            if words[i] in vocab.KEYS:  # reverse: "V K", the label is V's key
                assert pairs[words[i]] == words[i - 1]
                kinds.add("reverse")
            else:  # forward: "... for K is V", the label is K's value
                assert words[i - 2] in pairs and pairs[words[i - 2]] == words[i]
                kinds.add("forward")
        assert sum(t != -100 for t in row_labels) == 3
    assert kinds == {"forward", "reverse"}


def test_nearest_key_head_takes_the_key_before_each_value_and_the_final_is(tok):
    torch.manual_seed(0)
    args = train.parse_args(["--layers", "1", "--attention-bias", "1", "--group-init", "1",
                             "--nearest-key-head", "2"])
    model = train.build_model(args, tok)
    model.config._attn_implementation = "eager"
    rng = random.Random(5)
    keys, values = rng.sample(vocab.KEYS, 4), rng.sample(range(10, 100), 4)
    filler = " Anna sees the old house near the lake. Tom sleeps."
    text = "".join(filler + " " + vocab.NEEDLE.format(key=k, value=v) for k, v in zip(keys, values))
    text += "\n" + vocab.Q_SINGLE.format(key=keys[2])
    ids = torch.tensor([tok(text)["input_ids"]])
    words = tok.convert_ids_to_tokens(ids[0])
    with torch.no_grad():
        attn = model(ids, output_attentions=True).attentions[0][0, 0]
    values_at = [i for i, w in enumerate(words) if w.isdigit()]
    assert len(values_at) == 4
    for i in values_at:  # "for K is V": V attends K, two back
        assert attn[i].argmax() == i - 2 and attn[i, i - 2] > 0.9
    last = len(words) - 1  # "... for K is": the final "is" attends K, one back
    assert words[last] == "is" and attn[last].argmax() == last - 1 and attn[last, last - 1] > 0.9


def test_nearest_key_head_needs_bias_and_group_init(tok):
    with pytest.raises(SystemExit, match="needs --attention-bias 1 and --group-init 1"):
        train.build_model(train.parse_args(["--nearest-key-head", "2", "--group-init", "1"]), tok)
