"""`longctx eval` / longctx.eval.harness: same samples for every method, exact methods score
sample for sample like dense, one-line errors; the shipped needle model answers (if present)."""

import contextlib
import io
import json
import os

import pytest

from helpers import REPO
from longctx.cli import main
from longctx.eval.harness import disagreements, format_report

NEEDLE_MODEL = os.path.join(REPO, "examples", "models", "needle-llama")


def run_main(*argv):
    """(exit status, stdout, stderr) of `longctx *argv` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def report(word_model):
    status, out, err = run_main("eval", "--model", word_model, "--tasks", "niah_single,niah_multikey",
                                "--length", "300", "--nproc", "2", "--methods", "dense,burst,ulysses",
                                "--samples", "2", "--seed", "5", "--threads", "1", "--json")
    assert status == 0, err
    assert len(out.strip().splitlines()) == 1
    return json.loads(out)


def test_json_report_shape(report):
    assert report["tasks"] == ["niah_single", "niah_multikey"]
    assert report["methods"] == ["dense", "burst", "ulysses"]
    assert report["workers"] == {"dense": 1, "burst": 2, "ulysses": 2}
    assert report["max_new_tokens"] == 2  # numbers are one word-level token, plus one
    for task in report["tasks"]:
        assert len(report["expected"][task]) == 2
        assert all(280 <= n <= 300 for n in report["prompt_tokens"][task])
        for method in report["methods"]:
            accuracy = report["accuracy"][task][method]
            assert isinstance(accuracy, float) and 0.0 <= accuracy <= 1.0
            assert len(report["correct"][task][method]) == 2
            assert all(isinstance(mark, bool) for mark in report["correct"][task][method])
    for method in report["methods"]:
        assert report["prefill_s"][method] > 0


def test_hf_sdpa_baseline_on_every_sample(report):
    hf = report["hf_sdpa"]
    assert set(hf) >= {"mean_s", "seconds", "argmax", "threads", "device", "dtype"}
    assert hf["threads"] == os.cpu_count() and (hf["device"], hf["dtype"]) == ("cpu", "float32")
    every = [value for task in report["tasks"] for value in hf["seconds"][task]]
    assert len(every) == 4 and hf["mean_s"] == pytest.approx(sum(every) / len(every))
    for method in report["methods"]:
        ttft = report["ttft_s"][method]
        assert ttft == pytest.approx(report["prefill_s"][method] + report["query_s"][method])
        assert report["speedup_vs_hf"][method] == pytest.approx(hf["mean_s"] / ttft)
    assert report["hf_token_disagreements"]["dense"] == 0  # HF's next token is dense's first token


def test_exact_methods_score_sample_for_sample_like_dense(report):
    for task in report["tasks"]:
        for method in ("burst", "ulysses"):
            assert report["correct"][task][method] == report["correct"][task]["dense"]
            assert report["predictions"][task][method] == report["predictions"][task]["dense"]
        assert all(report["predictions"][task]["dense"])
    assert report["reference"] == "dense"
    assert report["disagreements"] == disagreements(report["correct"], report["methods"], "dense")
    assert report["disagreements"]["burst"] == report["disagreements"]["ulysses"] == 0


def test_disagreements_count_samples_scored_differently_from_the_reference():
    correct = {"niah_single": {"dense": [True, False, True], "star": [True, True, False], "burst": [True, False, True]},
               "niah_multikey": {"dense": [False], "star": [True], "burst": [False]}}
    assert disagreements(correct, ["dense", "star", "burst"], "dense") == {"dense": 0, "star": 3, "burst": 0}
    assert disagreements(correct, ["dense", "star"], "star") == {"dense": 3, "star": 0}


def test_text_table_lists_every_task_and_method(report):
    text = format_report(report)
    lines = text.splitlines()
    assert lines[1].split() == ["task", "dense", "burst", "ulysses"]
    assert lines[2].startswith("niah_single") and lines[3].startswith("niah_multikey")
    assert any(line.startswith("prefill s") for line in lines)
    speedups = next(line for line in lines if line.startswith("x HF SDPA")).split()[3:]
    assert speedups == [f"{report['speedup_vs_hf'][m]:.2f}" for m in report["methods"]]
    assert any(line.startswith("HF SDPA: mean") for line in lines)


def test_text_without_baseline_shows_no_speedups(report):
    quick = dict(report, hf_sdpa=None, speedup_vs_hf={m: None for m in report["methods"]},
                 hf_token_disagreements=None)
    text = format_report(quick)
    assert "x HF SDPA" not in text and "--no-baseline" in text


def test_unknown_task_is_one_line_error(word_model):
    status, out, err = run_main("eval", "--model", word_model, "--tasks", "niah_single,needle_in_space",
                                "--length", "300", "--methods", "dense", "--samples", "1")
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("longctx: error: unknown task 'needle_in_space'")


@pytest.mark.skipif(not os.path.isdir(NEEDLE_MODEL), reason="examples/models/needle-llama not trained yet")
def test_needle_model_dense_answers_niah_single():
    from longctx.eval.harness import evaluate

    report = evaluate(NEEDLE_MODEL, ["niah_single"], 1024, nproc=1, methods=["dense"], samples=3, seed=7, threads=1)
    dense, = report.columns
    assert dense.correct["niah_single"] == [True, True, True], (dense.predictions, report.expected)


def test_method_variants_parse_to_their_own_options():
    from longctx.eval.variants import parse_specs

    specs = parse_specs("dense,apb[compressor=random,passing-len=0], apb[anchor_len=0],burst[intra-size=2]")
    assert [(spec.label, spec.method, spec.options) for spec in specs] == [
        ("dense", "dense", {}),
        ("apb[compressor=random,passing-len=0]", "apb", {"compressor": "random", "passing_len": 0}),
        ("apb[anchor_len=0]", "apb", {"anchor_len": 0}),
        ("burst[intra-size=2]", "burst", {"intra_size": 2}),
    ]


@pytest.mark.parametrize("methods,message", [
    ("apb[passing-len=0", "unbalanced brackets"),
    ("apb[compresor=random]", "method 'apb' has no option 'compresor' (its options: anchor-head-tokens"),
    ("apb[passing-len=many]", "passing-len='many' in 'apb[passing-len=many]' is not a valid int"),
    ("apb[passing-len]", "'passing-len' in 'apb[passing-len]' is not option=value"),
    ("dense[anchor-len=1]", "method 'dense' has no option 'anchor-len' (its options: none)"),
])
def test_bad_method_variant_is_one_line_error(word_model, methods, message):
    status, out, err = run_main("eval", "--model", word_model, "--length", "300", "--methods", methods,
                                "--samples", "1", "--no-baseline")
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"longctx: error: --methods: {message}"), err


def test_method_variants_are_columns_of_one_run(word_model):
    """Variants are columns of one run, each in a pool with its own options; APB's invariant
    through them: no anchor and every block passed whole answers as dense, sample for sample."""
    status, out, err = run_main("eval", "--model", word_model, "--tasks", "niah_single", "--length", "300",
                                "--nproc", "2", "--methods", "dense,apb[anchor-len=0,passing-ratio=1],apb",
                                "--samples", "2", "--seed", "3", "--threads", "1", "--no-baseline", "--json")
    assert status == 0, err
    report = json.loads(out)
    full = "apb[anchor-len=0,passing-ratio=1]"
    assert report["methods"] == ["dense", full, "apb"]
    assert report["method_options"] == {"dense": {}, full: {"anchor_len": 0, "passing_ratio": 1.0}, "apb": {}}
    assert report["predictions"]["niah_single"][full] == report["predictions"]["niah_single"]["dense"]
    assert report["workers"] == {"dense": 1, full: 2, "apb": 2}


def test_task_variants_set_the_generator(word_model):
    """A task variant is a row whose samples its settings made: one hop, so two statements."""
    status, out, err = run_main("eval", "--model", word_model, "--tasks", "variable_tracking[num-hops=1]",
                                "--length", "300", "--methods", "dense", "--samples", "2", "--no-baseline",
                                "--threads", "1", "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["tasks"] == ["variable_tracking[num-hops=1]"]
    from longctx.eval.tasks import make_samples
    from longctx.models import load_tokenizer

    samples = make_samples("variable_tracking", 300, 2, seed=0, tokenizer=load_tokenizer(word_model), num_hops=1)
    assert report["expected"]["variable_tracking[num-hops=1]"] == [sample.answer for sample in samples]
    assert all(sample.document.count("The value of") == 4 for sample in samples)  # 2 chains x 2 statements


def test_bad_task_variant_is_one_line_error(word_model):
    status, out, err = run_main("eval", "--model", word_model, "--tasks", "variable_tracking[hops=1]",
                                "--length", "300", "--methods", "dense", "--samples", "1")
    assert status == 2 and out == ""
    assert err == ("longctx: error: --tasks: task 'variable_tracking' has no option 'hops' (its options: depth, "
                   "num-chains, num-hops)\n")
