"""longctx.baseline (HF SDPA, the reference of every speed-up) and the demo report built on it:
the baseline's next token is longctx dense's first token, speed-ups are hf_time / method_time.
No timing assertions (the machine is shared)."""

import json
import os
import statistics

import pytest
import torch

from helpers import dense_result
from longctx.baseline import HFSDPABaseline, describe_speedup, speedup
from longctx.compare import random_prompt
from longctx.errors import LongCtxError
from longctx.models import check_model_dir


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_argmax_is_dense_first_token(tiny_model, name):
    model_dir = tiny_model(name)
    doc_ids, query_ids = random_prompt(check_model_dir(model_dir).vocab_size, 200, 6, seed=4)
    threads = torch.get_num_threads()
    with HFSDPABaseline(model_dir) as hf:
        timing = hf.time(doc_ids, query_ids, repeats=2)
        again = hf.time(doc_ids[:50], query_ids, repeats=1)  # the loaded model serves other token lists
    assert torch.get_num_threads() == threads  # restored after the measurement
    dense = dense_result(model_dir, doc_ids, query_ids, max_new_tokens=1)
    assert timing.argmax == dense.tokens[0]
    assert again.argmax == dense_result(model_dir, doc_ids[:50], query_ids, max_new_tokens=1).tokens[0]
    assert len(timing.seconds) == 2 and timing.median_s == pytest.approx(statistics.median(timing.seconds))
    assert (timing.device, timing.dtype, timing.tokens, timing.threads) == ("cpu", "float32", 206, os.cpu_count())
    assert json.dumps(timing.to_dict())


def test_bad_model_dir_is_one_line_error(tmp_path):
    with pytest.raises(LongCtxError, match="does not exist"):
        HFSDPABaseline(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LongCtxError) as info:
        HFSDPABaseline(str(tmp_path))
    assert "\n" not in str(info.value)


def test_speedup_is_hf_time_over_method_time():
    assert speedup(0.3, 0.1) == pytest.approx(3.0)
    assert speedup(None, 0.1) is None and speedup(0.3, None) is None
    assert describe_speedup(1.6) == "1.60x faster than HF SDPA"
    assert describe_speedup(0.5) == "2.00x slower than HF SDPA"


def test_needle_demo_reports_time_to_first_token_against_hf(word_model, tmp_path):
    from longctx.demo import needle_demo
    from longctx.eval.tasks import make_sample
    from longctx.models import load_tokenizer

    sample = make_sample("niah_single", 300, seed=2, tokenizer=load_tokenizer(word_model))
    (tmp_path / "haystack.txt").write_text(sample.document + "\n")
    (tmp_path / "question.json").write_text(json.dumps({"task": "niah_single", "question": sample.question,
                                                        "answer": sample.answer}))
    report = needle_demo(word_model, nproc=2, method="burst", data_dir=str(tmp_path), repeats=1)
    generate, dense, hf = report["generate"], report["dense"], report["hf_sdpa"]
    assert report["ttft_s"] == pytest.approx(generate["prefill_s"] + generate["query_s"])
    assert report["dense_ttft_s"] == pytest.approx(dense["prefill_s"] + dense["query_s"])
    assert report["speedup_vs_hf"] == pytest.approx(hf["median_s"] / report["ttft_s"])
    assert report["dense_speedup_vs_hf"] == pytest.approx(hf["median_s"] / report["dense_ttft_s"])
    assert report["simulated_ttft_s"] > 0
    assert report["simulated_speedup_vs_hf"] == pytest.approx(hf["median_s"] / report["simulated_ttft_s"])
    assert "2 simulated hosts" in report["text"]
    assert report["hf_agrees_with_dense"] and hf["argmax"] == dense["tokens"][0] == generate["tokens"][0]
    assert hf["tokens"] == generate["doc_tokens"] + generate["question_tokens"]
    assert report["workers_on"] == f"2 workers on {os.cpu_count()} CPU core{'s' * (os.cpu_count() != 1)}"
    text = report["text"]
    assert "time to first token" in text and "than HF SDPA" in text and report["workers_on"] in text


def test_tiny_demo_reports_burst_against_hf():
    from longctx.demo import tiny_demo

    report = tiny_demo(nproc=2, repeats=1)
    generate, hf = report["generate"], report["hf_sdpa"]
    assert report["ttft_s"] == pytest.approx(generate["prefill_s"] + generate["query_s"])
    assert report["speedup_vs_hf"] == pytest.approx(hf["median_s"] / report["ttft_s"])
    assert hf["argmax"] == generate["tokens"][0]
    assert all(row["tokens_match"] for row in report["compare"]["results"])
    assert "than HF SDPA" in report["text"]


def test_of_model_times_sdpa_on_longctx_weights_and_restores_attention(tiny_model):
    """`of_model` runs HF SDPA on a model loaded for longctx (same weights) and gives the
    longctx attention back afterwards."""
    import torch

    from longctx.baseline import HFSDPABaseline
    from longctx.models import load_model

    model_dir = tiny_model("llama")
    model = load_model(model_dir, torch.device("cpu"), torch.float32)
    attention_name = model.config._attn_implementation
    doc_ids, query_ids = list(range(3, 60)), list(range(60, 66))
    from_dir = HFSDPABaseline(model_dir).time(doc_ids, query_ids)
    shared = HFSDPABaseline.of_model(model).time(doc_ids, query_ids)
    assert shared.argmax == from_dir.argmax
    assert model.config._attn_implementation == attention_name != "sdpa"
