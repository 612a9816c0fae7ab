"""`longctx demo`: run a real request end to end on local workers and check it against dense.

With the shipped model (examples/models/needle-llama, or `--model DIR`) it answers the shipped
needle question (examples/data/question.json) over the shipped haystack
(examples/data/haystack.txt) with `--method` (default apb) on `nproc` workers, then with dense on
one worker for comparison. Without it, a tiny random-weight Llama made on the fly shows the
exact methods agree with dense.
"""

import json
import os
import tempfile
import time

from longctx.api import LongContextLM
from longctx.compare import compare_methods
from longctx.config import RunConfig
from longctx.errors import LongCtxError
from longctx.models.tiny import make_tiny_model


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the editable checkout
SHIPPED_MODEL = os.path.join(REPO, "examples", "models", "needle-llama")
SHIPPED_DATA = os.path.join(REPO, "examples", "data")


def run_demo(nproc=2, model=None, method="apb"):
    """The trained-model demo when `model` (default: the shipped needle model, if present)
    exists, else the tiny random-model demo. Returns a report dict with "text"."""
    if model is None and os.path.isdir(SHIPPED_MODEL):
        model = SHIPPED_MODEL
    if model is None:
        return tiny_demo(nproc)
    return needle_demo(model, nproc, method)


def tiny_demo(nproc=2):
    """Make a tiny random Llama, answer a question over a generated document with `burst` on
    `nproc` workers, and compare burst/ring/ulysses/allgather with dense. Returns a report dict
    whose "text" is the human-readable summary."""
    with tempfile.TemporaryDirectory(prefix="longctx-demo-") as model_dir:
        make_tiny_model(model_dir, "llama", hidden=64, layers=2, heads=4, kv_heads=2)
        document = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(40))
        started = time.perf_counter()
        with LongContextLM(model_dir, method="burst", nproc=nproc) as lm:
            startup_s = time.perf_counter() - started
            result = lm.generate(document, "What does the fox do?", max_new_tokens=16)
            config = RunConfig(model=model_dir, nproc=nproc)
            methods = ["burst", "ring", "allgather"] + (["ulysses"] if 4 % nproc == 0 else [])
            comparison = compare_methods(config, methods, length=1000, lm=lm)
    lines = [
        "longctx demo (tiny random-weight Llama made on the fly; the trained example model replaces it)",
        f"workers: {nproc} local processes, started in {startup_s:.1f} s",
        f"burst prefill of {result.doc_tokens} tokens: {result.prefill_s:.3f} s; "
        f"decoded {len(result.tokens)} tokens in {result.decode_s:.3f} s",
        f"answer text (random weights, so not meaningful): {result.text!r}",
        "agreement with single-process dense on 1000 random tokens:",
    ]
    for row in comparison["results"]:
        lines.append(f"  {row['method']:<10} hidden rel err {row['hidden_rel_err']:.1e}, "
                     f"greedy tokens {'identical' if row['tokens_match'] else 'DIFFERENT'}, "
                     f"prefill {row['prefill_s']:.3f} s")
    return {"text": "\n".join(lines), "generate": result.to_dict(), "compare": comparison}


def load_shipped_question(data_dir=SHIPPED_DATA):
    """(document, question dict) from haystack.txt and question.json in `data_dir`."""
    paths = [os.path.join(data_dir, name) for name in ("haystack.txt", "question.json")]
    try:
        with open(paths[0], encoding="utf-8") as handle:
            document = handle.read()
        with open(paths[1], encoding="utf-8") as handle:
            question = json.load(handle)
    except (OSError, ValueError) as exc:
        raise LongCtxError(f"cannot read the demo data in {data_dir}: {exc}") from None
    # the prompt is the haystack without its final newline, a newline, then the question
    return document.rstrip("\n"), question


def describe_plan(plan):
    """One line on how a plan split the document: tokens per worker and, where the method has
    them, anchor / passing sizes and the compressor."""
    hosts = plan.get("hosts", [])
    parts = [f"{plan.get('layout', 'contiguous')} split, tokens per worker "
             + "/".join(str(host["tokens"]) for host in hosts)]
    anchor = plan.get("anchor_len", max((host["anchor_len"] for host in hosts), default=0))
    passing = plan.get("passing_len", max((host["passing_len"] for host in hosts), default=0))
    if anchor:
        parts.append(f"anchor {anchor} tokens")
    if passing:
        parts.append(f"passing {passing} tokens per host per layer (host h receives h x {passing})")
    if plan.get("compressor"):
        parts.append(f"compressor {plan['compressor']}")
    return ", ".join(parts)


def _shown(path):
    """`path` relative to the working directory when it lies below it, else absolute."""
    relative = os.path.relpath(os.path.abspath(path))
    return os.path.abspath(path) if relative.startswith("..") else relative


def needle_demo(model_dir, nproc=4, method="apb", data_dir=SHIPPED_DATA):
    """Answer the shipped needle question with `method` on `nproc` local workers and with dense
    on one worker; each pool answers once untimed first (warm-up). Returns a report dict."""
    from longctx.eval.harness import worker_count
    from longctx.eval.tasks import Sample, is_correct
    from longctx.models import check_model_dir, load_tokenizer

    document, spec = load_shipped_question(data_dir)
    answer = str(spec["answer"])
    sample = Sample(task=spec.get("task", "niah_single"), document=document, question=spec["question"],
                    answer=answer, length=spec.get("length_tokens", 0), depth=spec.get("depth"),
                    answers=[part.strip() for part in answer.split(",")])
    model_config = check_model_dir(model_dir)
    tokenizer = load_tokenizer(model_dir)
    max_new_tokens = len(tokenizer(" " + answer, add_special_tokens=False)["input_ids"]) + 1
    question = "\n" + sample.question
    runs = {}
    for name, workers in ((method, worker_count(method, RunConfig(model=model_dir, nproc=nproc), model_config)),
                          ("dense", 1)):
        started = time.perf_counter()
        with LongContextLM(model_dir, method=name, nproc=workers) as lm:
            startup_s = time.perf_counter() - started
            lm.generate(document, question, max_new_tokens=1)  # warm-up
            result = lm.generate(document, question, max_new_tokens=max_new_tokens)
        runs[name] = (result, is_correct(result.text, sample), startup_s)
    result, correct, startup_s = runs[method]
    dense, dense_correct, _ = runs["dense"]
    rate = result.doc_tokens / max(result.prefill_s, 1e-9)
    lines = [
        f"longctx demo: {_shown(model_dir)} on the shipped haystack "
        f"({result.doc_tokens} document + {result.question_tokens} question tokens)",
        f"question: {sample.question}",
        f"{method} on {result.nproc} local workers (started in {startup_s:.1f} s): "
        f"answer {result.text.strip()!r}, expected {answer!r} -> {'correct' if correct else 'WRONG'}",
        f"  prefill {result.prefill_s:.3f} s ({rate:,.0f} tok/s), query {result.query_s:.3f} s, "
        f"decode {result.decode_s:.3f} s for {len(result.tokens)} token(s) (after one warm-up request)",
        f"  plan: {describe_plan(result.plan)}",
        f"dense on 1 worker: answer {dense.text.strip()!r} -> {'correct' if dense_correct else 'WRONG'}; "
        f"prefill {dense.prefill_s:.3f} s ({dense.prefill_s / max(result.prefill_s, 1e-9):.2f}x {method}'s)",
    ]
    return {"text": "\n".join(lines), "model": model_dir, "method": method, "expected": answer,
            "correct": correct, "generate": result.to_dict(), "dense_correct": dense_correct,
            "dense": dense.to_dict()}
