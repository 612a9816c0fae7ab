"""Streaming: the engine hands rank 0 each token as soon as it is decided (before the next
decoding step), the local launcher forwards them, and `LongContextLM.stream` yields the text
as it grows, ending with the same result as `generate`."""

import torch

from longctx.api import LongContextLM
from longctx.comm import ProcessGroupComm
from longctx.config import RunConfig
from longctx.engine import Engine, Request
from longctx.models import load_model


def test_engine_calls_on_token_before_the_next_decoding_step(tiny_model):
    """Forwards counted: the query pass is forward 1 and decides token 1; token i is handed
    over after forward i and before forward i + 1 (prefill runs through `base_model`)."""
    model_dir = tiny_model("llama")
    model = load_model(model_dir, torch.device("cpu"), torch.float32)
    forwards, seen = [], []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    engine = Engine(model, ProcessGroupComm(), RunConfig(model=model_dir, method="dense", nproc=1), torch.device("cpu"))
    result = engine.run(Request(list(range(5, 60)), [7, 8], 6, "dense"),
                        on_token=lambda token: seen.append((token, len(forwards))))
    assert [token for token, _ in seen] == result.tokens and len(seen) == 6
    assert [count for _, count in seen] == list(range(1, 7))


def test_stream_yields_text_and_ends_with_generates_result(tiny_model):
    document = "Numbers: " + " ".join(str(i) for i in range(80))
    with LongContextLM(tiny_model("llama"), method="burst", nproc=2) as lm:
        expected = lm.generate(document, "Next?", max_new_tokens=6)
        layers = []
        stream = lm.stream_prepared(lm.prepare(document, "Next?", max_new_tokens=6),
                                    on_layer=lambda done, total: layers.append((done, total)))
        pieces = list(stream)
        assert layers == [(1, 2), (2, 2)]  # rank 0's prefill layers, forwarded as they finish
        assert "".join(pieces) == expected.text == stream.result.text
        assert stream.result.tokens == expected.tokens
        for _ in lm.stream(document, "Next?", max_new_tokens=6):
            break  # a reader that stops early leaves the pool usable
        assert lm.generate(document, "Next?", max_new_tokens=6).tokens == expected.tokens

