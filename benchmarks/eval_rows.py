"""Accuracy tables whose rows are method variants answering the same samples: the shared part
of `apb_ablation.py` and `spava_accuracy.py`.

Each length is one `longctx.eval.harness.evaluate` call, i.e. one `longctx eval` command (the
results record it per length), with equal contiguous blocks for every row (`--balance
equal`) and no HF baseline, so rows differ only in what their method computes.
"""

import json
import os
import sys

from longctx.config import split_specs
from longctx.eval.harness import evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def eval_command(model, tasks, length, hosts, specs, samples, seed):
    """The `longctx eval` command line that computes one length's report (`specs`: {row: method spec})."""
    return (f"longctx eval --model {os.path.relpath(model, ROOT)} --tasks '{tasks}' --length {length} "
            f"--nproc {hosts} --methods '{','.join(specs.values())}' --balance equal "
            f"--samples {samples} --seed {seed} --no-baseline --json")


def run_rows(model, tasks, lengths, hosts, specs, samples, seed):
    """The results dict: the settings, then per length (a str key) its `command` (what
    `eval_command` runs), the `expected` answers and per row its method spec, workers, and per
    task its accuracy, per-sample correctness and predictions. Progress goes to stderr."""
    results = {"model": os.path.relpath(model, ROOT), "tasks": split_specs(tasks, "--tasks"), "hosts": hosts,
               "samples": samples, "seed": seed, "balance": "equal", "rows": specs, "lengths": {}}
    for length in lengths:
        command = eval_command(model, tasks, length, hosts, specs, samples, seed)
        print(f"{length} tokens: {command}", file=sys.stderr, flush=True)
        report = evaluate(model, tasks, length, hosts, list(specs.values()), samples, seed=seed, baseline=False,
                          balance="equal").to_dict()
        per_row = {row: {"method": spec, "workers": report["workers"][spec],
                         "accuracy": {task: report["accuracy"][task][spec] for task in report["tasks"]},
                         "correct": {task: report["correct"][task][spec] for task in report["tasks"]},
                         "predictions": {task: report["predictions"][task][spec] for task in report["tasks"]}}
                   for row, spec in specs.items()}
        results["lengths"][str(length)] = {"command": command, "expected": report["expected"], "rows": per_row}
    return results


def table(results):
    """Markdown table: one line per row, one column per (task, length), accuracy in %."""
    lengths, tasks = list(results["lengths"]), results["tasks"]
    head = "| row | " + " | ".join(f"{task} {int(length):,}" for length in lengths for task in tasks) + " |"
    lines = [head, "|---" * (1 + len(lengths) * len(tasks)) + "|"]
    for row in results["rows"]:
        cells = [f"{100 * results['lengths'][length]['rows'][row]['accuracy'][task]:.0f} %"
                 for length in lengths for task in tasks]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chosen_rows(names, known):
    """The row names of a comma-separated list, in its order; SystemExit naming the first one
    not in `known` (the script's rows)."""
    rows = [row.strip() for row in names.split(",") if row.strip()]
    unknown = [row for row in rows if row not in known]
    if unknown:
        raise SystemExit(f"unknown row {unknown[0]!r}; rows: {', '.join(known)}")
    return rows


def print_saved_table(path):
    """Print the Markdown `table` of a results file written by a script that uses `run_rows`."""
    with open(path) as handle:
        print(table(json.load(handle)))
