"""APB's ablation (Huang et al., Table 4) on our model: which of APB's parts an answer needs.

    python benchmarks/apb_ablation.py --out benchmarks/results/apb_ablation.json
    python benchmarks/apb_ablation.py --smoke --out /tmp/apb_ablation.json     # seconds, for CI

Every row answers the very same samples (`longctx.eval.harness.evaluate`, one pool per row,
no HF baseline), on --hosts workers at each --lengths, with equal contiguous blocks for every
row (`balance="equal"`: the published layout, so rows differ only in what they ablate):

    dense                   one worker, the reference
    apb (query)             the query-aware compressor (default)
    apb (retaining-heads)   learned heads (--retaining-heads FILE, `python -m apb.train_heads`)
    apb (random)            random passing blocks
    apb (no passing)        --passing-len 0
    star                    StarAttention: an anchor of document tokens only, nothing passed
    apb (no anchor)         --anchor-len 0
    burst                   exact (BurstAttention)

The committed heads (benchmarks/results/needle_llama_heads.safetensors) were trained with

    python -c "from longctx.eval import make_samples; from transformers import AutoTokenizer as A; \
t = A.from_pretrained('examples/models/needle-llama'); open('/tmp/heads_corpus.txt', 'w').write(''.join( \
s.prompt + ' ' + s.answer + chr(10) for task in ('niah_single', 'niah_multikey', 'variable_tracking') \
for s in make_samples(task, 2048, 6, seed=77, tokenizer=t)))"
    python -m apb.train_heads --model examples/models/needle-llama --texts /tmp/heads_corpus.txt \
        --out benchmarks/results/needle_llama_heads.safetensors --seq-len 1024 --tail 64 --hidden 64 \
        --steps 800 --lr 3e-3 --device cpu

The JSON holds, per length, each row's accuracy per task, its predictions and correctness
per sample, and the expected answers; `--table` prints a Markdown table of it.
"""

import argparse
import json
import os
import sys

from longctx.eval.harness import evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = {
    "dense": ("dense", {}),
    "apb (query)": ("apb", {"compressor": "query"}),
    "apb (retaining-heads)": ("apb", {"compressor": "retaining-heads"}),
    "apb (random)": ("apb", {"compressor": "random"}),
    "apb (no passing)": ("apb", {"passing_len": 0}),
    "star": ("star", {}),
    "apb (no anchor)": ("apb", {"anchor_len": 0}),
    "burst": ("burst", {}),
}


def parse_args(argv=None):
    """Command-line options (defaults: the committed run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "examples", "models", "needle-llama"))
    parser.add_argument("--tasks", default="variable_tracking,niah_multikey")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows (see the module docstring)")
    parser.add_argument("--retaining-heads", default=None, metavar="FILE",
                        help="heads for the retaining-heads row (without it the row is left out)")
    parser.add_argument("--smoke", action="store_true", help="2 samples at 1,024 tokens")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--table", default=None, metavar="JSON", help="print the Markdown table of a results file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.lengths, args.samples = [1024], 2
    return args


def run_row(args, row, length):
    """`evaluate`'s report for one row at one length (the row's method and options)."""
    method, options = ROWS[row]
    if options.get("compressor") == "retaining-heads":
        options = {**options, "retaining_heads": args.retaining_heads}
    return evaluate(args.model, args.tasks, length, args.hosts, [method], args.samples, seed=args.seed,
                    baseline=False, balance="equal", **options)


def ablation(args):
    """The results dict: settings, then per length and row the accuracy and per-sample answers."""
    rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        raise SystemExit(f"unknown row {unknown[0]!r}; rows: {', '.join(ROWS)}")
    if args.retaining_heads is None:
        rows = [row for row in rows if row != "apb (retaining-heads)"]
    results = {"model": os.path.relpath(args.model, ROOT), "tasks": args.tasks.split(","), "hosts": args.hosts,
               "samples": args.samples, "seed": args.seed, "balance": "equal", "rows": rows,
               "retaining_heads": args.retaining_heads, "lengths": {}}
    for length in args.lengths:
        per_row = {}
        for row in rows:
            print(f"{length} tokens: {row}", file=sys.stderr, flush=True)
            report = run_row(args, row, length)
            method = report["methods"][0]
            per_row[row] = {
                "method": method, "options": report["options"], "workers": report["workers"][method],
                "accuracy": {task: report["accuracy"][task][method] for task in report["tasks"]},
                "correct": {task: report["correct"][task][method] for task in report["tasks"]},
                "predictions": {task: report["predictions"][task][method] for task in report["tasks"]},
            }
            expected = report["expected"]
        results["lengths"][str(length)] = {"expected": expected, "rows": per_row}
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


def main(argv=None):
    """Run the ablation (or with --table print a saved one); prints the Markdown table."""
    args = parse_args(argv)
    if args.table:
        with open(args.table) as handle:
            print(table(json.load(handle)))
        return 0
    results = ablation(args)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
