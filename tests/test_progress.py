"""The progress line (`longctx.progress`) and the notes on a disappointing answer
(`longctx.answer_lines.answer_notes`); no workers."""

import io
from types import SimpleNamespace

import torch

from longctx.answer_lines import answer_notes
from longctx.models import load_tokenizer
from longctx.progress import PrefillProgress, layer_hooks, shown


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_shows_on_a_terminal_only_and_never_when_quiet():
    assert shown(stream=Terminal()) and not shown(quiet=True, stream=Terminal()) and not shown(stream=io.StringIO())
    screen = Terminal()
    progress = PrefillProgress(4096, stream=screen)
    progress.starting(4)
    progress.layer(1, 2)
    progress.layer(2, 2)
    progress.close()
    text = screen.getvalue()
    assert "starting 4 workers" in text and "prefill 4,096 tokens: 2/2 layers" in text and "tok/s" in text
    silent = io.StringIO()
    off = PrefillProgress(10, enabled=False, stream=silent)
    off.starting(2), off.layer(1, 2), off.close()
    assert silent.getvalue() == ""


def test_layer_hooks_report_every_decoder_layer_once_then_detach(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama"))
    seen = []
    with layer_hooks(model.model, lambda done, total: seen.append((done, total))), torch.inference_mode():
        model.model(input_ids=torch.tensor([[5, 6, 7]]))
    with torch.inference_mode():
        model.model(input_ids=torch.tensor([[5, 6, 7]]))
    assert seen == [(1, 2), (2, 2)]


def test_answer_notes_say_why_an_answer_disappoints():
    """The shipped needle model on English prose: most words are <unk>, and its first token is </s>."""
    tokenizer = load_tokenizer("examples/models/needle-llama")
    doc = tokenizer("the quick brown fox jumps over the lazy dog while philosophers ponder", add_special_tokens=False)
    request = SimpleNamespace(doc_ids=doc["input_ids"])
    eos = tokenizer.eos_token_id
    notes = answer_notes(SimpleNamespace(tokens=[eos], text=""), request, tokenizer, (eos,))
    assert len(notes) == 2 and "of the document's" in notes[0] and "unknown to the model's tokenizer (<unk>)" in notes[0]
    assert notes[1] == f"the answer is empty: the model's first token was its end token ('</s>', id {eos})"
    known = SimpleNamespace(doc_ids=tokenizer("the special magic number", add_special_tokens=False)["input_ids"])
    assert answer_notes(SimpleNamespace(tokens=[eos], text="42"), known, tokenizer, (eos,)) == []
