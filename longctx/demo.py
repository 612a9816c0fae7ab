"""`longctx demo`: run a real request end to end on local workers and check it against dense.

With the shipped model (examples/models/needle-llama, or `--model DIR`) it answers the shipped
needle question (examples/data/question.json) over the shipped haystack
(examples/data/haystack.txt) with `--method` (default apb) on `nproc` workers, then with longctx
dense on one worker, and times Hugging Face's own SDPA forward of the same tokens in this process
once every worker pool is closed (`longctx.baseline`). Every speed-up it prints is against that
HF forward, comparing like with like: HF's one forward over document + question gives the first
answer token's logits, which a longctx method gets from its prefill plus its query pass ("time
to first token"). It also simulates the method on as many hosts as workers, each host with the
whole machine (`longctx.simulate`: each host's work timed alone, the network modelled), which is
what a user with one device per worker would see. Without the shipped model, a tiny
random-weight Llama made on the fly shows the exact methods agree with dense.
"""

import json
import os
import tempfile
import time

from longctx.api import LongContextLM
from longctx.baseline import NAME as HF, HFSDPABaseline, describe_speedup, speedup
from longctx.compare import compare_methods
from longctx.config import RunConfig
from longctx.errors import LongCtxError
from longctx.models import resolve_device
from longctx.models.tiny import make_tiny_model
from longctx.models.family import encode_prompt
from longctx.request import Session
from longctx.simulate import Link


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the editable checkout
SHIPPED_MODEL = os.path.join(REPO, "examples", "models", "needle-llama")
SHIPPED_DATA = os.path.join(REPO, "examples", "data")
SIMULATED_LINK = Link(gb_per_s=10.0, latency_us=20.0)  # as benchmarks/cpu_methods.py: a 100 Gb/s link


def run_demo(nproc=2, model=None, method="apb", repeats=3):
    """The trained-model demo when `model` (default: the shipped needle model, if present)
    exists, else the tiny random-model demo. Returns a report dict with "text"."""
    if model is None and os.path.isdir(SHIPPED_MODEL):
        model = SHIPPED_MODEL
    if model is None:
        return tiny_demo(nproc, repeats)
    return needle_demo(model, nproc, method, repeats=repeats)


def median_request(lm, document, question, max_new_tokens, repeats):
    """One untimed warm-up request, then `repeats`; the result with the median time to first
    token (`GenerationResult.ttft_s`: prefill + query pass, the work HF's one forward over
    document + question does)."""
    lm.generate(document, question, max_new_tokens=1)
    results = sorted((lm.generate(document, question, max_new_tokens=max_new_tokens) for _ in range(repeats)),
                     key=lambda result: result.ttft_s)
    return results[(len(results) - 1) // 2]


def hf_baseline(model_dir, tokenizer, document, question, repeats):
    """BaselineTiming of HF SDPA on the prompt's tokens (median of `repeats` after a warm-up).
    Call it while no worker pool is alive."""
    doc_ids, query_ids = encode_prompt(tokenizer, document, question)
    with HFSDPABaseline(model_dir) as hf:
        return hf.time(doc_ids, query_ids, repeats)


def hf_and_simulated(model_dir, tokenizer, document, question, method, hosts, repeats):
    """(HF SDPA BaselineTiming, simulated time to first token of `method` on `hosts` hosts) on the
    prompt's tokens, both on one copy of the weights in this process with every core (median of
    `repeats` after a warm-up; `longctx.simulate`, link SIMULATED_LINK). Call it while no worker
    pool is alive."""
    import torch

    from longctx.models import load_model
    from longctx.simulate import critical_path, simulate_hosts

    doc_ids, query_ids = encode_prompt(tokenizer, document, question)
    device = torch.device("cpu")
    model = load_model(model_dir, device, torch.float32)
    baseline = HFSDPABaseline.of_model(model).time(doc_ids, query_ids, repeats)
    config = RunConfig(model=model_dir, method=method, nproc=hosts)
    saved = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        simulate_hosts(model, config, doc_ids, query_ids, hosts, device)  # warm-up
        times = sorted(critical_path(simulate_hosts(model, config, doc_ids, query_ids, hosts, device),
                                     SIMULATED_LINK)["total_s"] for _ in range(repeats))
    finally:
        torch.set_num_threads(saved)
    return baseline, times[(len(times) - 1) // 2]


def _count(number, word):
    return f"{number} {word}{'' if number == 1 else 's'}"


def describe_workers(nproc):
    """What `nproc` local workers share, e.g. '4 workers on 2 CPU cores'."""
    import torch

    if resolve_device("auto").type == "cuda":
        return f"{_count(nproc, 'worker')} on {_count(min(nproc, torch.cuda.device_count()), 'GPU')}"
    return f"{_count(nproc, 'worker')} on {_count(os.cpu_count() or 1, 'CPU core')}"


def describe_baseline(timing, repeats):
    """Two lines: how long the HF SDPA baseline took and what it ran."""
    return (f"{HF}: {timing.median_s:.3f} s for one forward over the {timing.tokens} tokens "
            f"(median of {repeats} after one warm-up)\n"
            f"  unmodified model, one process, {_count(timing.threads, 'thread')}, {timing.device} {timing.dtype}, "
            "every worker pool closed")


def tiny_demo(nproc=2, repeats=3):
    """Make a tiny random Llama, answer a question over a generated document with `burst` on
    `nproc` workers, compare burst/ring/ulysses/allgather with dense, and time HF SDPA on the
    question's tokens. Returns a report dict whose "text" is the human-readable summary."""
    question = "What does the fox do?"
    with tempfile.TemporaryDirectory(prefix="longctx-demo-") as model_dir:
        make_tiny_model(model_dir, "llama", hidden=64, layers=2, heads=4, kv_heads=2)
        document = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(40))
        started = time.perf_counter()
        with LongContextLM(model_dir, method="burst", nproc=nproc) as lm:
            startup_s = time.perf_counter() - started
            result = median_request(lm, document, question, 16, repeats)
            config = RunConfig(model=model_dir, nproc=nproc)
            methods = ["burst", "ring", "allgather"] + (["ulysses"] if 4 % nproc == 0 else [])
            comparison = compare_methods(config, methods, length=1000, lm=lm, baseline_repeats=0)
        baseline = hf_baseline(model_dir, lm.tokenizer, document, question, repeats)
    ratio = speedup(baseline.median_s, result.ttft_s)
    lines = [
        "longctx demo (tiny random-weight Llama made on the fly; the trained example model replaces it)",
        f"workers: {describe_workers(nproc)}, started in {startup_s:.1f} s",
        f"burst on {result.doc_tokens} document + {result.question_tokens} question tokens: time to first token "
        f"{result.ttft_s:.3f} s, {describe_speedup(ratio)}",
        f"  prefill {result.prefill_s:.3f} s + query {result.query_s:.3f} s; decoded {len(result.tokens)} tokens "
        f"in {result.decode_s:.3f} s",
        describe_baseline(baseline, repeats),
        f"answer text (random weights, so not meaningful): {result.text!r}",
        "agreement with single-process dense on 1000 random tokens:",
    ]
    for row in comparison["results"]:
        lines.append(f"  {row['method']:<10} hidden rel err {row['hidden_rel_err']:.1e}, "
                     f"greedy tokens {'identical' if row['tokens_match'] else 'DIFFERENT'}")
    return {"text": "\n".join(lines), "generate": result.to_dict(), "ttft_s": result.ttft_s,
            "hf_sdpa": baseline.to_dict(), "speedup_vs_hf": ratio, "workers_on": describe_workers(nproc),
            "repeats": repeats, "compare": comparison}


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
    anchor = plan.get("anchor_len", max((host.get("anchor_len", 0) for host in hosts), default=0))
    passing = plan.get("passing_len", max((host.get("passing_len", 0) for host in hosts), default=0))
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


def needle_demo(model_dir, nproc=4, method="apb", data_dir=SHIPPED_DATA, repeats=3):
    """Answer the shipped needle question with `method` on `nproc` local workers and with dense
    on one worker (one untimed warm-up request, then the median of `repeats`), then, with both
    pools closed, time HF SDPA on the same tokens and simulate `method` on as many hosts, each
    with the whole machine (`hf_and_simulated`). Returns a report dict; every speed-up in it is
    HF SDPA's forward time / the method's time to first token (prefill + query)."""
    from longctx.eval.tasks import Sample, is_correct

    document, spec = load_shipped_question(data_dir)
    answer = str(spec["answer"])
    sample = Sample(task=spec.get("task", "niah_single"), document=document, question=spec["question"],
                    answer=answer, length=spec.get("length_tokens", 0), depth=spec.get("depth"),
                    answers=[part.strip() for part in answer.split(",")])
    session = Session(RunConfig(model=model_dir, method=method, nproc=nproc))
    tokenizer = session.tokenizer
    max_new_tokens = len(tokenizer(" " + answer, add_special_tokens=False)["input_ids"]) + 1
    question = "\n" + sample.question
    runs = {}
    for name, workers in ((method, session.workers_for(method)), ("dense", 1)):
        started = time.perf_counter()
        with LongContextLM(model_dir, method=name, nproc=workers) as lm:
            startup_s = time.perf_counter() - started
            result = median_request(lm, document, question, max_new_tokens, repeats)
        runs[name] = (result, is_correct(result.text, sample), startup_s)
    baseline, simulated = hf_and_simulated(model_dir, tokenizer, document, question, method,
                                           runs[method][0].nproc, repeats)  # every pool is closed
    result, correct, startup_s = runs[method]
    dense, dense_correct, _ = runs["dense"]
    ratio, dense_ratio = speedup(baseline.median_s, result.ttft_s), speedup(baseline.median_s, dense.ttft_s)
    agrees = bool(dense.tokens) and dense.tokens[0] == baseline.argmax
    lines = [
        f"longctx demo: {_shown(model_dir)} on the shipped haystack "
        f"({result.doc_tokens} document + {result.question_tokens} question tokens)",
        f"question: {sample.question}",
        f"{method} on {describe_workers(result.nproc)} (started in {startup_s:.1f} s): "
        f"answer {result.text.strip()!r}, expected {answer!r} -> {'correct' if correct else 'WRONG'}",
        f"  time to first token {result.ttft_s:.3f} s, {describe_speedup(ratio)} ({baseline.median_s:.3f} s)",
        f"  prefill {result.prefill_s:.3f} s ({result.prefill_tokens_per_s:,.0f} tok/s) + query {result.query_s:.3f} s; "
        f"decode {result.decode_s:.3f} s for {len(result.tokens)} token(s)",
        f"  plan: {describe_plan(result.plan)}",
        f"longctx dense on 1 worker: answer {dense.text.strip()!r} -> {'correct' if dense_correct else 'WRONG'}; "
        f"time to first token {dense.ttft_s:.3f} s, {describe_speedup(dense_ratio)}",
        describe_baseline(baseline, repeats) + f"; its next token {'agrees' if agrees else 'DISAGREES'} with dense's",
        f"{method} on {result.nproc} simulated hosts with the machine each (each host's work timed alone, network "
        f"modelled at {SIMULATED_LINK.gb_per_s:g} GB/s): time to first token {simulated:.3f} s, "
        f"{describe_speedup(speedup(baseline.median_s, simulated))}",
        "(time to first token = prefill + query pass, the work of HF's one forward over document + question;",
        f" longctx times: median of {repeats} requests after one warm-up; everything measured in this run)",
    ]
    return {"text": "\n".join(lines), "model": model_dir, "method": method, "expected": answer,
            "correct": correct, "generate": result.to_dict(), "ttft_s": result.ttft_s, "speedup_vs_hf": ratio,
            "dense_correct": dense_correct, "dense": dense.to_dict(), "dense_ttft_s": dense.ttft_s,
            "dense_speedup_vs_hf": dense_ratio, "hf_sdpa": baseline.to_dict(), "hf_agrees_with_dense": agrees,
            "workers_on": describe_workers(result.nproc), "repeats": repeats,
            "simulated_ttft_s": simulated, "simulated_speedup_vs_hf": speedup(baseline.median_s, simulated)}
