"""Prefill time of every method on the same input, side by side in one run.

    python benchmarks/bench_methods.py --model DIR --nproc 4 --length 16384 \
        --methods burst,ring,ulysses,allgather,star,apb --repeats 3 --out benchmarks/results/methods.json

Dense runs on one worker, every other method on one shared pool of --nproc workers; each
method runs --repeats times (alternating methods, so drift hits all alike) and the median
prefill time is reported with the speed-up over dense. Writes JSON, and a PNG when
matplotlib is installed.
"""

import argparse
import json
import os
import statistics
import time

from longctx.api import LongContextLM
from longctx.compare import random_prompt
from longctx.models import check_model_dir


def measure(model, methods, nproc, length, repeats, query_len, device):
    """{method: [prefill seconds per repeat]} with dense on one worker and the rest on `nproc`."""
    vocab = check_model_dir(model).vocab_size
    doc_ids, query_ids = random_prompt(vocab, length, query_len, seed=0)
    times = {"dense": []}
    with LongContextLM(model, method="dense", nproc=1, device=device) as lm:
        for _ in range(repeats):
            times["dense"].append(lm.run_ids(doc_ids, query_ids, max_new_tokens=1)["prefill_s"])
    with LongContextLM(model, method=methods[0], nproc=nproc, device=device) as lm:
        for _ in range(repeats):
            for method in methods:
                raw = lm.run_ids(doc_ids, query_ids, max_new_tokens=1, method=method)
                times.setdefault(method, []).append(raw["prefill_s"])
    return times


def main():
    """Parse arguments, measure, print a table, write JSON (+ PNG)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--methods", default="burst,ring,ulysses,allgather")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--query-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="benchmarks/results/methods.json")
    args = parser.parse_args()
    methods = [name for name in args.methods.split(",") if name]
    times = measure(args.model, methods, args.nproc, args.length, args.repeats, args.query_len, args.device)
    dense = statistics.median(times["dense"])
    rows = [{"method": name, "median_prefill_s": statistics.median(values), "runs_s": values,
             "speedup_vs_dense": dense / statistics.median(values),
             "tokens_per_s": args.length / statistics.median(values)} for name, values in times.items()]
    for row in rows:
        print(f"{row['method']:<10} {row['median_prefill_s']:8.3f} s  {row['tokens_per_s']:10,.0f} tok/s  "
              f"x{row['speedup_vs_dense']:.2f} vs dense")
    report = {"model": args.model, "nproc": args.nproc, "length": args.length, "repeats": args.repeats,
              "device": args.device, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "results": rows}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([row["method"] for row in rows], [row["speedup_vs_dense"] for row in rows])
    ax.set_ylabel("prefill speed-up vs dense")
    ax.set_title(f"{args.length} tokens, {args.nproc} workers")
    fig.tight_layout()
    fig.savefig(os.path.splitext(args.out)[0] + ".png")


if __name__ == "__main__":
    main()
