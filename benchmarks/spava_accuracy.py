"""Spava's accuracy table on the shipped video model: what each method answers to the same
video needle questions (`longctx eval --tasks video_retrieval,video_ordering,video_counting`).

    python benchmarks/spava_accuracy.py --out benchmarks/results/spava_accuracy_vn_qwen_vl.json
    python benchmarks/spava_accuracy.py --smoke --out /tmp/spava_accuracy.json   # 2 samples at 1,024 tokens

Rows, on --hosts workers (`eval_rows`: each length one `longctx eval` command, recorded in the
JSON, every row on the same samples, equal blocks, no HF baseline):

    dense                   one worker, the reference
    spava                   Spava as published (anchor, zigzag blocks, query-aware passing)
    spava (no passing)      --passing-len 0: each block sees the anchor and itself only
    apb                     APB (anchor of document tokens plus the question, passing)
    star                    StarAttention: the first block as every host's anchor, no passing
    burst                   exact (BurstAttention), equal to dense up to rounding

The samples' seed (default 5000) lies past the training script's steps (its clips are seeded
by step number, 0-1,549), so no question of the table was seen in training. The JSON holds per
length each row's accuracy per task, its predictions and correctness per sample and the
expected answers; a PNG of the accuracies is written beside it; `--table` prints the Markdown
table of a results file.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from eval_rows import ROOT, chosen_rows, print_saved_table, run_rows, table  # noqa: E402

ROWS = {
    "dense": "dense",
    "spava": "spava",
    "spava (no passing)": "spava[passing-len=0]",
    "apb": "apb",
    "star": "star",
    "burst": "burst",
}
TASKS = "video_retrieval,video_ordering,video_counting"


def parse_args(argv=None):
    """Command-line options (defaults: the committed run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "examples", "models", "vn-qwen-vl"))
    parser.add_argument("--tasks", default=TASKS, help="comma-separated video tasks")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--seed", type=int, default=5000)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows (see the module docstring)")
    parser.add_argument("--smoke", action="store_true", help="2 samples at 1,024 tokens")
    parser.add_argument("--out", default=None, help="JSON file for the results (a PNG is written beside it)")
    parser.add_argument("--table", default=None, metavar="JSON", help="print the Markdown table of a results file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.lengths, args.samples = [1024], 2
    if not args.table and not args.out:
        parser.error("--out is required (the committed results are benchmarks/results/spava_accuracy_vn_qwen_vl.json)")
    return args


def row_specs(rows):
    """{row: `longctx eval` method spec} of a comma-separated list of row names."""
    return {row: ROWS[row] for row in chosen_rows(rows, ROWS)}


def plot(results, path):
    """Grouped bars: accuracy per (task, length), one bar per row; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    columns = [(length, task) for length in results["lengths"] for task in results["tasks"]]
    rows = list(results["rows"])
    width = 0.8 / len(rows)
    fig, axis = plt.subplots(figsize=(10, 4.0))
    for index, row in enumerate(rows):
        values = [100 * results["lengths"][length]["rows"][row]["accuracy"][task] for length, task in columns]
        axis.bar([column + (index - (len(rows) - 1) / 2) * width for column in range(len(columns))], values,
                 width, label=row)
    axis.set_xticks(range(len(columns)), [f"{task.split('_')[1]}\n{int(length):,} tokens" for length, task in columns],
                    fontsize=8)
    axis.set_ylabel("accuracy (%)")
    axis.set_ylim(0, 105)
    axis.set_title(f"{results['model']}, {results['hosts']} hosts, {results['samples']} samples per task", fontsize=9)
    axis.legend(fontsize=7, ncol=len(rows), loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    """Run the table (or with --table print a saved one); prints the Markdown table."""
    args = parse_args(argv)
    if args.table:
        print_saved_table(args.table)
        return 0
    results = run_rows(args.model, args.tasks, args.lengths, args.hosts, row_specs(args.rows), args.samples,
                       args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=1)
    png = plot(results, os.path.splitext(args.out)[0] + ".png")
    print(table(results))
    print(f"\nwrote {args.out}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
