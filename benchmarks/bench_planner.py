"""APB prefill with equal blocks vs the planner's balanced blocks, measured in one run.

    python benchmarks/bench_planner.py --nproc 4 --length 4096 --repeats 5 --out /tmp/planner_apb.json
    python benchmarks/bench_planner.py --smoke --out /tmp/planner_smoke.json   # seconds: 2 workers, 1,024 tokens (CI)

`--out` is required: the committed results (benchmarks/results/planner_apb.json) are replaced
only when named there on purpose.

1. Calibrates the cost model on this machine for the model (one thread per worker, as the
   workers run) and saves it next to the results (`--costs FILE` skips this and uses FILE).
2. Plans APB with `--balance equal` and `--balance auto` and prints both plans' per-host
   estimates (the planner's predicted ratio of critical paths).
3. Starts one pool of --nproc local workers and runs the same needle-in-a-haystack prompt
   (`longctx.eval.tasks`, niah_single at --length tokens) with the equal and the balanced
   plan in alternation, after one warm-up each; the pool is the same, only the plan
   differs (two tiny method plug-ins below pin the balance per request).
4. Reports the median prefill time of each and the measured ratio equal / balanced, with
   every repetition, the answers, the machine's load, and writes JSON (+ PNG when
   matplotlib is installed).
5. Also reports every host's compute: CPU seconds of its main thread during the prefill
   (time spent waiting in collectives is not CPU time), next to the planner's estimate.
   The slowest host's compute is the critical path when every host has a core (a GPU) of
   its own; wall-clock time is that only when the workers do not share cores.

Timings on a shared or oversubscribed machine are noisy: read the per-repetition numbers.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dataclasses import dataclass, fields  # noqa: E402

from apb.compress import CompressorState  # noqa: E402
from apb.method import APBAttention  # noqa: E402
from apb.passing import PassingStats  # noqa: E402


@dataclass
class TimedState(CompressorState):
    """APB's per-request state plus the prefill's layer count and starting CPU time."""

    layers: int = 0
    cpu0: float = 0.0


@dataclass
class TimedStats(PassingStats):
    """APB's counters plus every host's CPU seconds of the prefill."""

    host_cpu_s: list = None


class TimedAPB(APBAttention):
    """APB that also measures each host's compute: CPU seconds of the worker's main thread from
    the start of the prefill forward to the end of the last layer's attention (waiting in
    collectives costs no CPU time), gathered into `stats.host_cpu_s` on rank 0."""

    balance = "equal"
    Stats = TimedStats

    def __init__(self, config):
        super().__init__(config.replace(balance=self.balance))

    def new_state(self, plan, rank):
        """APB's state (whatever it holds) with room for the clock."""
        state = super().new_state(plan, rank)
        return TimedState(**{item.name: getattr(state, item.name) for item in fields(state)})

    def prefill_hooks(self, ctx, model):
        """Start the clock (and remember the layer count)."""
        ctx.state.layers = model.config.num_hidden_layers
        ctx.state.cpu0 = time.thread_time()
        return super().prefill_hooks(ctx, model)

    def prefill_attention(self, ctx, layer, q, k, v, scale):
        """APB's attention; after the last layer's, every host's CPU seconds are all-gathered."""
        attended = super().prefill_attention(ctx, layer, q, k, v, scale)
        if layer == ctx.state.layers - 1:
            import torch

            spent = torch.tensor([time.thread_time() - ctx.state.cpu0], dtype=torch.float64)
            ctx.stats.host_cpu_s = [float(part[0]) for part in ctx.comm.all_gather(spent)]
        return attended


class EqualAPB(TimedAPB):
    """APB with equal blocks, whatever the pool's --balance (a plug-in: "bench_planner:EqualAPB")."""

    balance = "equal"


class BalancedAPB(TimedAPB):
    """APB with the planner's balanced blocks (a plug-in: "bench_planner:BalancedAPB")."""

    balance = "auto"


PLANS = {"equal": "bench_planner:EqualAPB", "auto": "bench_planner:BalancedAPB"}


def parse_args(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "examples" / "models" / "needle-llama"))
    parser.add_argument("--nproc", type=int, default=4)
    parser.add_argument("--length", type=int, default=8192, help="prompt tokens (niah_single sample)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each plan (after one warm-up each)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per worker (default: cores / nproc)")
    parser.add_argument("--costs", default=None, help="use this cost file instead of calibrating")
    parser.add_argument("--calibrate-sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="CI: 2 workers, 1,024 tokens, one repetition, a short calibration (its figures mean nothing)")
    parser.add_argument("--out", required=True, metavar="FILE.json",
                        help="where to write the results (also FILE.png, and FILE_costs.json unless --costs); "
                             "the committed ones are benchmarks/results/planner_apb.json: name it to replace them")
    args = parser.parse_args(argv)
    if args.smoke:
        args.nproc, args.length, args.repeats, args.calibrate_sizes = 2, 1024, 1, [128, 256]
    return args


def calibrate_costs(model_dir, threads, sizes, path):
    """Calibrate CPU coefficients for the model at `threads` threads and save them to `path`."""
    import torch

    from longctx.calibrate import calibrate
    from longctx.costmodel import ModelShape
    from longctx.costs import save_costs
    from longctx.models import check_model_dir

    torch.set_num_threads(threads)
    shape = ModelShape.from_config(check_model_dir(model_dir), dtype_bytes=4)
    coeffs = calibrate(shape, "cpu", sizes=sizes)
    save_costs(coeffs, path)
    return coeffs


def planned(config, model_config, doc_len, query_len):
    """{balance: plan summary} for equal and balanced APB (driver side, no workers)."""
    from longctx.plan_report import plan_one

    return {balance: plan_one(config.replace(balance=balance), model_config, doc_len, query_len)[1].summary()
            for balance in PLANS}


def main(argv=None):
    """Calibrate, plan, measure, print, write JSON (+ PNG)."""
    args = parse_args(argv)
    from longctx.api import LongContextLM
    from longctx.config import RunConfig
    from longctx.eval.tasks import is_correct, make_sample
    from longctx.models import check_model_dir, load_tokenizer
    from longctx.models.family import encode_prompt

    cores = os.cpu_count() or 1
    threads = args.threads or max(1, cores // args.nproc)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    costs_path = args.costs or str(out.with_name(out.stem + "_costs.json"))
    load_before = os.getloadavg()
    if not args.costs:
        print(f"calibrating CPU costs with {threads} thread(s) ...", flush=True)
        calibrate_costs(args.model, threads, args.calibrate_sizes, costs_path)

    tokenizer = load_tokenizer(args.model)
    sample = make_sample("niah_single", args.length, args.seed, tokenizer=tokenizer)
    doc_ids, query_ids = encode_prompt(tokenizer, sample.document, "\n" + sample.question)
    config = RunConfig(model=args.model, method="apb", nproc=args.nproc, device="cpu", threads=threads,
                       costs=costs_path).validate()
    plans = planned(config, check_model_dir(args.model), len(doc_ids), len(query_ids))
    for balance, plan in plans.items():
        hosts = plan["hosts"]
        print(f"{balance:>5}: blocks {[h['tokens'] for h in hosts]}, estimated ms "
              f"{[round(h['est_ms']) for h in hosts]}, critical {plan['totals']['critical_ms']:.0f} ms, "
              f"imbalance {plan['totals']['imbalance']:.3f}")
    predicted = plans["equal"]["totals"]["critical_ms"] / plans["auto"]["totals"]["critical_ms"]
    print(f"predicted ratio (equal / balanced critical path): {predicted:.3f}", flush=True)

    runs = {balance: [] for balance in PLANS}
    host_cpu = {balance: [] for balance in PLANS}
    answers = {balance: [] for balance in PLANS}
    served = {}
    started = time.perf_counter()
    with LongContextLM(args.model, method="apb", nproc=args.nproc, device="cpu", threads=threads,
                       costs=costs_path) as lm:
        for repeat in range(args.repeats + 1):
            order = list(PLANS) if repeat % 2 == 0 else list(reversed(PLANS))
            for balance in order:
                raw = lm.run_ids(doc_ids, query_ids, max_new_tokens=args.max_new_tokens, method=PLANS[balance])
                served[balance] = raw.plan
                text = tokenizer.decode(raw.tokens, skip_special_tokens=True)
                if repeat == 0:
                    print(f"warm-up {balance}: {raw.prefill_s:.2f} s", flush=True)
                    continue
                runs[balance].append(raw.prefill_s)
                host_cpu[balance].append(raw.stats.host_cpu_s)
                answers[balance].append(text)
                print(f"run {repeat} {balance:>5}: prefill {raw.prefill_s:.2f} s, host CPU s "
                      f"{[round(value, 2) for value in raw.stats.host_cpu_s]}, answer {text!r}", flush=True)
    wall = time.perf_counter() - started
    medians = {balance: statistics.median(values) for balance, values in runs.items()}
    measured = medians["equal"] / medians["auto"]
    pairs = [equal / auto for equal, auto in zip(runs["equal"], runs["auto"])]
    # Each host's median CPU seconds; the slowest host is the critical path when every host has a core of its own.
    host_median = {balance: [statistics.median(run[rank] for run in runs_) for rank in range(args.nproc)]
                   for balance, runs_ in host_cpu.items()}
    compute_ratio = max(host_median["equal"]) / max(host_median["auto"])
    estimates = {balance: [host["est_ms"] / 1000 for host in served[balance]["hosts"]] for balance in PLANS}
    print(f"median prefill: equal {medians['equal']:.2f} s, balanced {medians['auto']:.2f} s; "
          f"measured ratio {measured:.3f} (per repetition {min(pairs):.3f}..{max(pairs):.3f}, "
          f"{args.repeats} repetitions each), predicted {predicted:.3f}")
    for balance in PLANS:
        print(f"{balance:>5}: median host CPU s {[round(v, 2) for v in host_median[balance]]} "
              f"(estimated {[round(v, 2) for v in estimates[balance]]})")
    print(f"critical path of host compute (slowest host's CPU s): equal / balanced = {compute_ratio:.3f}")
    report = {
        "benchmark": "APB prefill, equal vs balanced blocks, one worker pool, alternating repetitions",
        "smoke": args.smoke,
        "model": os.path.relpath(args.model, REPO) if args.model.startswith(str(REPO)) else args.model,
        "nproc": args.nproc, "threads_per_worker": threads, "cpu_count": cores, "platform": platform.platform(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "task": "niah_single", "seed": args.seed, "doc_tokens": len(doc_ids), "question_tokens": len(query_ids),
        "expected_answer": sample.answer,
        "answers": answers,
        "correct": {balance: [is_correct(text, sample) for text in texts] for balance, texts in answers.items()},
        "repeats": args.repeats,
        "prefill_s": runs,
        "median_prefill_s": medians,
        "measured_ratio_equal_over_balanced": measured,
        "per_repetition_ratio": pairs,
        "predicted_ratio_equal_over_balanced": predicted,
        "host_cpu_s": host_cpu,
        "median_host_cpu_s": host_median,
        "estimated_host_s": estimates,
        "compute_critical_path_ratio_equal_over_balanced": compute_ratio,
        "plans": {balance: served[balance] for balance in PLANS},
        "costs": json.loads(Path(costs_path).read_text())["cpu"],
        "costs_file": os.path.relpath(costs_path, REPO) if costs_path.startswith(str(REPO)) else costs_path,
        "wall_s": wall,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    _plot(report, out.with_suffix(".png"))


def _plot(report, path):
    """Per-host estimates of both plans and the measured prefill times (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    width = 0.4
    for offset, balance in ((-width / 2, "equal"), (width / 2, "auto")):
        hosts = report["plans"][balance]["hosts"]
        left.bar([h["rank"] + offset for h in hosts], [h["est_ms"] / 1000 for h in hosts], width, label=balance)
    left.set_xlabel("host")
    left.set_ylabel("estimated prefill s")
    left.set_title("planner estimate per host")
    left.legend()
    for offset, balance in ((-width / 2, "equal"), (width / 2, "auto")):
        cpu = report["median_host_cpu_s"][balance]
        right.bar([rank + offset for rank in range(len(cpu))], cpu, width, label=balance)
    right.set_xlabel("host")
    right.set_ylabel("measured CPU s (median)")
    right.set_title(f"wall ratio {report['measured_ratio_equal_over_balanced']:.2f}, slowest-host ratio "
                    f"{report['compute_critical_path_ratio_equal_over_balanced']:.2f} ({report['repeats']} reps)",
                    fontsize=9)
    right.legend()
    fig.suptitle(f"APB, {report['doc_tokens']} tokens, {report['nproc']} CPU workers")
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
