"""Accuracy of prefill methods on the RULER-style tasks, sample for sample.

    from longctx.eval.harness import evaluate
    report = evaluate("examples/models/needle-llama", ["niah_single", "niah_multikey"], 4096,
                      nproc=4, methods=["dense", "burst", "apb"], samples=50, seed=0)
    print(format_report(report))

The samples are generated once with the model's tokenizer (`make_samples` at the requested
prompt length) and every method answers the very same token ids; `is_correct` scores each
greedy continuation. Methods that accept `nproc` workers share one pool of `nproc` workers;
a method that accepts one worker but refuses two (dense) runs in its own 1-worker pool. Each
pool is started once and serves all of its methods' samples; every method first answers one
untimed warm-up request, so the mean times exclude one-off start-up costs.

Speed is reported against Hugging Face's own SDPA forward of the same model and the same
tokens in one process with every core (`longctx.baseline`), measured in the same run on every
sample (one timed forward each, after one untimed warm-up) before any worker pool starts.
That forward yields the first answer token's logits; a method needs its prefill plus its query
pass for them, so the comparison is HF's mean forward time / the method's mean time to first
token (prefill + query). `longctx eval` is the CLI.
"""

import dataclasses
import sys
import time

from longctx.api import LongContextLM
from longctx.baseline import HFSDPABaseline, speedup
from longctx.config import RunConfig
from longctx.errors import LongCtxError
from longctx.eval.tasks import is_correct, make_samples
from longctx.eval.variants import parse_specs, parse_task_specs
from longctx.models import check_model_dir, load_tokenizer
from longctx.request import check_machine, encode_prompt, prepare_request, stop_ids, worker_count


def build_samples(tasks, length, count, seed, tokenizer):
    """{label: [Sample]}: `count` samples per task (TaskSpecs) at `length` prompt tokens."""
    if count < 1:
        raise LongCtxError(f"--samples must be at least 1 (got {count})")
    if length < 1:
        raise LongCtxError(f"--length must be at least 1 (got {length})")
    try:
        return {spec.label: make_samples(spec.task, length, count, seed=seed, tokenizer=tokenizer, **spec.settings)
                for spec in tasks}
    except ValueError as exc:
        raise LongCtxError(str(exc)) from None


def prompt_ids(tokenizer, sample):
    """(doc_ids, query_ids) of `sample.prompt` (document, newline, question)."""
    return encode_prompt(tokenizer, sample.document, "\n" + sample.question)


def default_max_new_tokens(tokenizer, samples):
    """Tokens of the longest expected answer, plus one (room for the end token)."""
    longest = max(len(tokenizer(" " + sample.answer, add_special_tokens=False)["input_ids"])
                  for task_samples in samples.values() for sample in task_samples)
    return longest + 1


def _mean(values):
    return sum(values) / len(values) if values else None


def evaluate(model_dir, tasks, length, nproc, methods, samples, seed=0, max_new_tokens=None,
             progress=False, baseline=True, **run_options):
    """Run every method on the same samples of every task; returns the report dict.

    `tasks` / `methods`: lists or comma-separated strings; a method may be a variant with options
    of its own, `apb[compressor=random]`, a task one with generator settings of its own,
    `variable_tracking[num-hops=2]` (`longctx.eval.variants`), each reported under its label.
    Methods with the same worker count and own options share one pool. `run_options` are RunConfig fields
    (device, dtype, timeout_s, anchor_len, compressor, ...) for every pool. `progress` shows
    a tqdm bar on stderr. `baseline` times HF SDPA on every sample before any pool starts.
    Report keys: accuracy[task][method], mean_accuracy[method], prefill_s / query_s / ttft_s
    [method] (means over all samples; ttft = prefill + query), correct[task][method]
    (per-sample booleans), predictions[task][method], expected[task], workers[method],
    disagreements[method] (samples scored differently from the first method), the run's
    settings, and from the baseline (None without it): hf_sdpa (mean_s, per-sample seconds
    and argmax tokens per task, threads, device, dtype), speedup_vs_hf[method] (hf_sdpa
    mean_s / ttft_s) and hf_token_disagreements[method] (samples whose first generated token
    is not HF's argmax).
    """
    task_specs = parse_task_specs(tasks)
    tasks = [spec.label for spec in task_specs]
    specs = {spec.label: spec for spec in parse_specs(methods)}
    methods = list(specs)
    base = RunConfig(model=model_dir, method=specs[methods[0]].method, nproc=nproc, **run_options).validate()
    check_machine(base)
    configs = {label: base.replace(method=spec.method, **spec.options).validate() for label, spec in specs.items()}
    model_config = check_model_dir(model_dir)
    workers = {label: worker_count(specs[label].method, configs[label], model_config) for label in methods}
    tokenizer = load_tokenizer(model_dir)
    task_samples = build_samples(task_specs, length, samples, seed, tokenizer)
    ids = {task: [prompt_ids(tokenizer, sample) for sample in task_samples[task]] for task in tasks}
    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(tokenizer, task_samples)
    stop = stop_ids(tokenizer, model_config)
    requests = {}  # every request is validated once, here, before any worker starts
    for method in methods:
        method_config = configs[method].replace(nproc=workers[method])
        requests[method] = {task: [prepare_request(method_config, model_config, doc_ids, query_ids, max_new_tokens,
                                                   specs[method].method, stop=stop)
                                   for doc_ids, query_ids in ids[task]] for task in tasks}

    correct = {task: {} for task in tasks}
    predictions = {task: {} for task in tasks}
    prefill, query = {method: [] for method in methods}, {method: [] for method in methods}
    first_tokens = {task: {method: [] for method in methods} for task in tasks}
    started = time.perf_counter()
    bar = _progress_bar((len(methods) + bool(baseline)) * len(tasks) * samples, progress)
    try:
        hf = _hf_baseline(model_dir, base, ids, bar) if baseline else None  # before any worker starts
        for pool in dict.fromkeys(_pool_key(specs[method], workers[method]) for method in methods):
            group = [method for method in methods if _pool_key(specs[method], workers[method]) == pool]
            first = specs[group[0]]
            with LongContextLM(model_dir, method=first.method, nproc=pool[0], **{**run_options, **first.options}) as lm:
                for method in group:
                    bar.set_description(method)
                    warm_up = dataclasses.replace(requests[method][tasks[0]][0], max_new_tokens=1)
                    lm.run(warm_up)  # lazy init, kernels; not timed
                    for task in tasks:
                        marks, texts = correct[task].setdefault(method, []), predictions[task].setdefault(method, [])
                        for sample, request in zip(task_samples[task], requests[method][task]):
                            raw = lm.run(request)
                            text = tokenizer.decode(raw["tokens"], skip_special_tokens=True)
                            texts.append(text)
                            marks.append(is_correct(text, sample))
                            prefill[method].append(raw["prefill_s"])
                            query[method].append(raw["query_s"])
                            first_tokens[task][method].append(raw["tokens"][0] if raw["tokens"] else None)
                            bar.update(1)
    finally:
        bar.close()

    reference = methods[0]
    accuracy = {task: {method: _mean(correct[task][method]) for method in methods} for task in tasks}
    ttft = {method: _mean([p + q for p, q in zip(prefill[method], query[method])]) for method in methods}
    return {
        "model": model_dir,
        "tasks": tasks,
        "methods": methods,
        "length": length,
        "nproc": nproc,
        "samples": samples,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "workers": workers,
        "method_options": {label: specs[label].options for label in methods},
        "accuracy": accuracy,
        "mean_accuracy": {method: _mean([accuracy[task][method] for task in tasks]) for method in methods},
        "prefill_s": {method: _mean(prefill[method]) for method in methods},
        "query_s": {method: _mean(query[method]) for method in methods},
        "ttft_s": ttft,
        "hf_sdpa": hf,
        "speedup_vs_hf": {method: speedup(hf and hf["mean_s"], ttft[method]) for method in methods},
        "hf_token_disagreements": None if hf is None else {
            method: sum(a != b for task in tasks for a, b in zip(first_tokens[task][method], hf["argmax"][task]))
            for method in methods
        },
        "reference": reference,
        "disagreements": disagreements(correct, methods, reference),
        "correct": correct,
        "predictions": predictions,
        "expected": {task: [sample.answer for sample in task_samples[task]] for task in tasks},
        "prompt_tokens": {task: [len(d) + len(q) for d, q in ids[task]] for task in tasks},
        "options": {key: value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
                    for key, value in run_options.items()},
        "wall_s": time.perf_counter() - started,
    }


def _pool_key(spec, workers):
    """Methods that share a worker pool: the same worker count and the same own options."""
    return workers, tuple(sorted(spec.options.items()))


def disagreements(correct, methods, reference):
    """{method: samples scored differently from `reference`} over every task of `correct`
    ({task: {method: [bool per sample]}}); the reference's own count is 0."""
    return {method: sum(a != b for marks in correct.values() for a, b in zip(marks[method], marks[reference]))
            for method in methods}


def _hf_baseline(model_dir, config, ids, bar):
    """HF SDPA on every sample of `ids` ({task: [(doc_ids, query_ids)]}): one untimed warm-up,
    then one timed forward each. Returns the report's "hf_sdpa" dict."""
    bar.set_description("HF SDPA")
    seconds, argmax = {}, {}
    with HFSDPABaseline(model_dir, config.device, config.dtype) as hf:
        for task, pairs in ids.items():
            seconds[task], argmax[task] = [], []
            for doc_ids, query_ids in pairs:
                timing = hf.time(doc_ids, query_ids, repeats=1)
                seconds[task].append(timing.median_s)
                argmax[task].append(timing.argmax)
                bar.update(1)
    every = [value for values in seconds.values() for value in values]
    return {"mean_s": _mean(every), "seconds": seconds, "argmax": argmax, "threads": timing.threads,
            "device": timing.device, "dtype": timing.dtype}


def _progress_bar(total, enabled):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, file=sys.stderr, unit="sample", dynamic_ncols=True)


def format_report(report):
    """The report as a human-readable table: accuracy per task x method, then timings and the
    speed-up against HF SDPA (when the baseline was measured)."""
    methods = report["methods"]
    width = max(9, *(len(method) + 1 for method in methods))
    label = max(15, *(len(task) + 1 for task in report["tasks"]))
    hf = report.get("hf_sdpa")
    lines = [
        f"{', '.join(report['tasks'])}: {report['samples']} samples each at {report['length']} tokens "
        f"(seed {report['seed']}), model {report['model']}",
        f"{'task':<{label}}" + "".join(f"{method:>{width}}" for method in methods),
    ]
    for task in report["tasks"]:
        lines.append(f"{task:<{label}}" + "".join(f"{report['accuracy'][task][m]:>{width}.1%}" for m in methods))
    rows = [
        ("mean", lambda m: f"{report['mean_accuracy'][m]:.1%}"),
        ("prefill s", lambda m: f"{report['prefill_s'][m]:.3f}"),
        ("1st token s", lambda m: f"{report['ttft_s'][m]:.3f}"),
    ]
    if hf:
        rows.append(("x HF SDPA", lambda m: f"{report['speedup_vs_hf'][m]:.2f}"))
    rows.append(("workers", lambda m: str(report["workers"][m])))
    for name, cell in rows:
        lines.append(f"{name:<{label}}" + "".join(f"{cell(m):>{width}}" for m in methods))
    others = [m for m in methods if m != report["reference"]]
    if others:
        lines.append(f"samples scored differently from {report['reference']}: "
                     + ", ".join(f"{m} {report['disagreements'][m]}" for m in others))
    lines.append("1st token s: mean prefill + query pass per sample (the work of HF's one forward over "
                 "document + question)")
    if hf:
        lines.append(f"HF SDPA: mean {hf['mean_s']:.3f} s per sample (unmodified model, one process, "
                     f"{hf['threads']} threads, {hf['device']} {hf['dtype']}, no workers alive)")
        lines.append("x HF SDPA = HF SDPA's mean / 1st token s; first token differs from HF SDPA's: "
                     + ", ".join(f"{m} {report['hf_token_disagreements'][m]}" for m in methods))
    else:
        lines.append("HF SDPA baseline not measured (--no-baseline): no speed-ups")
    return "\n".join(lines)
