"""Accuracy of prefill methods on the RULER-style tasks, sample for sample.

    from longctx.eval.harness import evaluate
    report = evaluate("examples/models/needle-llama", ["niah_single", "niah_multikey"], 4096,
                      nproc=4, methods=["dense", "burst", "apb"], samples=50, seed=0)
    print(format_report(report.to_dict()))

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
from dataclasses import dataclass, field

from longctx.api import LongContextLM
from longctx.baseline import HFSDPABaseline, speedup
from longctx.config import RunConfig, method_owner
from longctx.errors import LongCtxError
from longctx.eval.tasks import is_correct, make_samples
from longctx.eval.video_needles import VideoSample
from longctx.eval.variants import parse_specs, parse_task_specs
from longctx.models.family import encode_prompt
from longctx.options import resolve
from longctx.request import Prompt, Session


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


def sample_inputs(session, sample):
    """(doc_ids, query_ids, media) of one sample: a text sample's `prompt_ids` (media None), or
    a video sample's clip and question through the model family's adapter (the clip's frames
    are then dropped from the sample: its processed video is what the requests keep)."""
    if not isinstance(sample, VideoSample):
        return (*prompt_ids(session.tokenizer, sample), None)
    session.family.check_modality(True)
    prompt = Prompt(question=sample.question, video=sample.frames, video_fps=sample.fps)
    doc_ids, query_ids, media = session.family.encode(session.tokenizer, session.config.model, prompt)
    sample.frames = None
    return doc_ids, query_ids, media


def default_max_new_tokens(tokenizer, samples):
    """Tokens of the longest expected answer, plus one (room for the end token)."""
    longest = max(len(tokenizer(" " + sample.answer, add_special_tokens=False)["input_ids"])
                  for task_samples in samples.values() for sample in task_samples)
    return longest + 1


def _mean(values):
    return sum(values) / len(values) if values else None


@dataclass
class MethodColumn:
    """One column of an evaluation: a method or variant (`label`), its own `options`, its
    `workers`, and per sample (tasks in order) its correctness, answer text, first generated
    token and prefill / query seconds."""

    label: str
    options: dict
    workers: int
    correct: dict = field(default_factory=dict)
    predictions: dict = field(default_factory=dict)
    first_tokens: dict = field(default_factory=dict)
    prefill: list = field(default_factory=list)
    query: list = field(default_factory=list)

    def record(self, task, sample, text, result):
        """Add one answered sample of `task` (its EngineResult `result`, decoded `text`)."""
        self.correct.setdefault(task, []).append(is_correct(text, sample))
        self.predictions.setdefault(task, []).append(text)
        self.first_tokens.setdefault(task, []).append(result.tokens[0] if result.tokens else None)
        self.prefill.append(result.prefill_s)
        self.query.append(result.query_s)

    def accuracy(self, task):
        """Share of `task`'s samples answered correctly."""
        return _mean(self.correct[task])

    @property
    def prefill_s(self):
        """Mean prefill seconds over every sample."""
        return _mean(self.prefill)

    @property
    def query_s(self):
        """Mean query-pass seconds over every sample."""
        return _mean(self.query)

    @property
    def ttft_s(self):
        """Mean time to first token (prefill + query) over every sample."""
        return _mean([p + q for p, q in zip(self.prefill, self.query)])


@dataclass
class HFTimes:
    """HF SDPA on every sample: `seconds` and `argmax` (its next token) per task, their mean,
    and what ran (threads, device, dtype)."""

    seconds: dict
    argmax: dict
    threads: int
    device: str
    dtype: str

    @property
    def mean_s(self):
        """Mean seconds per sample."""
        return _mean([value for values in self.seconds.values() for value in values])

    def to_dict(self):
        """JSON-ready dict (the report's "hf_sdpa")."""
        return {"mean_s": self.mean_s, "seconds": self.seconds, "argmax": self.argmax, "threads": self.threads,
                "device": self.device, "dtype": self.dtype}


@dataclass
class EvalReport:
    """What `evaluate` measured: the run's settings, one MethodColumn per method (the first is
    the reference), the samples' expected answers and prompt lengths, HF SDPA's times (None
    without the baseline). `to_dict` is its one JSON form (`longctx eval --json`), which
    `format_report` renders as text."""

    model: str
    tasks: list
    length: int
    nproc: int
    samples: int
    seed: int
    max_new_tokens: int
    columns: list
    expected: dict
    prompt_tokens: dict
    options: dict
    hf_sdpa: HFTimes = None
    wall_s: float = None

    @property
    def methods(self):
        """The columns' labels, in order."""
        return [column.label for column in self.columns]

    @property
    def reference(self):
        """The first column's label."""
        return self.columns[0].label

    def speedup_vs_hf(self, column):
        """HF SDPA's mean seconds / the column's mean time to first token (None without the baseline)."""
        return speedup(self.hf_sdpa and self.hf_sdpa.mean_s, column.ttft_s)

    def hf_token_disagreements(self, column):
        """Samples whose first generated token is not HF SDPA's next token."""
        return sum(a != b for task in self.tasks for a, b in zip(column.first_tokens[task], self.hf_sdpa.argmax[task]))

    def to_dict(self):
        """JSON-ready dict (see `evaluate` for its keys)."""
        columns, tasks = self.columns, self.tasks
        correct = {task: {column.label: column.correct[task] for column in columns} for task in tasks}
        return {
            "model": self.model,
            "tasks": tasks,
            "methods": self.methods,
            "length": self.length,
            "nproc": self.nproc,
            "samples": self.samples,
            "seed": self.seed,
            "max_new_tokens": self.max_new_tokens,
            "workers": {column.label: column.workers for column in columns},
            "method_options": {column.label: column.options for column in columns},
            "accuracy": {task: {column.label: column.accuracy(task) for column in columns} for task in tasks},
            "mean_accuracy": {column.label: _mean([column.accuracy(task) for task in tasks]) for column in columns},
            "prefill_s": {column.label: column.prefill_s for column in columns},
            "query_s": {column.label: column.query_s for column in columns},
            "ttft_s": {column.label: column.ttft_s for column in columns},
            "hf_sdpa": self.hf_sdpa and self.hf_sdpa.to_dict(),
            "speedup_vs_hf": {column.label: self.speedup_vs_hf(column) for column in columns},
            "hf_token_disagreements": None if self.hf_sdpa is None else {
                column.label: self.hf_token_disagreements(column) for column in columns},
            "reference": self.reference,
            "disagreements": disagreements(correct, self.methods, self.reference),
            "correct": correct,
            "predictions": {task: {column.label: column.predictions[task] for column in columns} for task in tasks},
            "expected": self.expected,
            "prompt_tokens": self.prompt_tokens,
            "options": self.options,
            "wall_s": self.wall_s,
        }


def evaluate(model_dir, tasks, length, nproc, methods, samples, seed=0, max_new_tokens=None,
             progress=False, baseline=True, **run_options):
    """Run every method on the same samples of every task; returns an EvalReport.

    `tasks` / `methods`: lists or comma-separated strings; a method may be a variant with options
    of its own, `apb[compressor=random]`, a task one with generator settings of its own,
    `variable_tracking[num-hops=2]` (`longctx.eval.variants`), each reported under its label.
    Methods with the same worker count and own options share one pool. `run_options` are RunConfig
    fields (device, dtype, timeout_s, ...) and options by name (anchor_len, compressor, ...,
    resolved against the methods) for every pool. `progress` shows a tqdm bar on stderr.
    `baseline` times HF SDPA on every sample before any pool starts.
    JSON keys (`EvalReport.to_dict`): accuracy[task][method], mean_accuracy[method], prefill_s /
    query_s / ttft_s [method] (means over all samples; ttft = prefill + query),
    correct[task][method] (per-sample booleans), predictions[task][method], expected[task],
    workers[method], disagreements[method] (samples scored differently from the first method),
    the run's settings, and from the baseline (None without it): hf_sdpa (mean_s, per-sample
    seconds and argmax tokens per task, threads, device, dtype), speedup_vs_hf[method]
    (hf_sdpa mean_s / ttft_s) and hf_token_disagreements[method] (samples whose first
    generated token is not HF's argmax).
    """
    task_specs = parse_task_specs(tasks)
    tasks = [spec.label for spec in task_specs]
    specs = {spec.label: spec for spec in parse_specs(methods)}
    base = RunConfig.for_methods([spec.method for spec in specs.values()], model=model_dir, nproc=nproc,
                                 **run_options).validate()
    session = Session(base)  # the machine, the model and its tokenizer, once
    model_dir = base.model  # a Hub id resolved to its snapshot by the session
    workers = {label: session.workers_for(spec.method) for label, spec in specs.items()}
    tokenizer = session.tokenizer
    task_samples = build_samples(task_specs, length, samples, seed, tokenizer)
    ids = {task: [sample_inputs(session, sample) for sample in task_samples[task]] for task in tasks}
    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(tokenizer, task_samples)
    pools, requests = {}, {}  # every request is checked once, here, before any worker starts
    for label, spec in specs.items():
        key = _pool_key(spec, workers[label])
        if key not in pools:
            own = resolve(spec.options, [method_owner(spec.method)])
            pools[key] = Session(base.replace(method=spec.method, nproc=workers[label], options=own))
        requests[label] = {task: [pools[key].prepare_ids(doc_ids, query_ids, max_new_tokens, spec.method, media=media)
                                  for doc_ids, query_ids, media in ids[task]] for task in tasks}
    columns = {label: MethodColumn(label, spec.options, workers[label]) for label, spec in specs.items()}
    started = time.perf_counter()
    bar = _progress_bar((len(specs) + bool(baseline)) * len(tasks) * samples, progress)
    try:
        hf = _hf_baseline(model_dir, base, ids, bar) if baseline else None  # before any worker starts
        for key, pool in pools.items():
            with LongContextLM.from_session(pool) as lm:
                for label in (label for label, spec in specs.items() if _pool_key(spec, workers[label]) == key):
                    bar.set_description(label)
                    lm.run(dataclasses.replace(requests[label][tasks[0]][0], max_new_tokens=1))  # warm-up
                    for task in tasks:
                        for sample, request in zip(task_samples[task], requests[label][task]):
                            result = lm.run(request)
                            columns[label].record(task, sample, tokenizer.decode(result.tokens, skip_special_tokens=True),
                                                  result)
                            bar.update(1)
    finally:
        bar.close()
    return EvalReport(model=model_dir, tasks=tasks, length=length, nproc=nproc, samples=samples, seed=seed,
                      max_new_tokens=max_new_tokens, columns=list(columns.values()),
                      expected={task: [sample.answer for sample in task_samples[task]] for task in tasks},
                      prompt_tokens={task: [len(d) + len(q) for d, q, _ in ids[task]] for task in tasks},
                      options=_shown_options(base, run_options),
                      hf_sdpa=hf, wall_s=time.perf_counter() - started)


def _shown_options(config, run_options):
    """The run's settings as the report shows them: the run-wide ones given, then the options by
    name (JSON values; others as text)."""
    values = {**{key: value for key, value in run_options.items() if key != "options"}, **config.option_values()}
    return {key: value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
            for key, value in values.items()}


def _pool_key(spec, workers):
    """Methods that share a worker pool: the same worker count and the same own options."""
    return workers, tuple(sorted(spec.options.items()))


def disagreements(correct, methods, reference):
    """{method: samples scored differently from `reference`} over every task of `correct`
    ({task: {method: [bool per sample]}}); the reference's own count is 0."""
    return {method: sum(a != b for marks in correct.values() for a, b in zip(marks[method], marks[reference]))
            for method in methods}


def _hf_baseline(model_dir, config, ids, bar):
    """HFTimes of HF SDPA on every sample of `ids` ({task: [(doc_ids, query_ids, media)]}): one
    untimed warm-up, then one timed forward each (a video's encoder inside it)."""
    bar.set_description("HF SDPA")
    seconds, argmax = {}, {}
    with HFSDPABaseline(model_dir, config.device, config.dtype, config.rope_scaling) as hf:
        for task, pairs in ids.items():
            seconds[task], argmax[task] = [], []
            for doc_ids, query_ids, media in pairs:
                timing = hf.time(doc_ids, query_ids, repeats=1, media=media)
                seconds[task].append(timing.median_s)
                argmax[task].append(timing.argmax)
                bar.update(1)
    return HFTimes(seconds, argmax, timing.threads, timing.device, timing.dtype)


def _progress_bar(total, enabled):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, file=sys.stderr, unit="sample", dynamic_ncols=True)


def format_report(report):
    """The report's JSON form (`EvalReport.to_dict`) as a human-readable table: accuracy per
    task x method, then timings and the speed-up against HF SDPA (when the baseline was
    measured)."""
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
