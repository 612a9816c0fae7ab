"""Time to first token of a fresh request vs a follow-up question on the cached document.

    python benchmarks/serve_cache.py --out benchmarks/results/serve_cache.json   # the committed run
    python benchmarks/serve_cache.py --smoke --out /tmp/serve_cache.json         # seconds, for CI

For each document length, in one run on this machine:

* **HF SDPA**: Hugging Face's own SDPA forward of document + question with every core (what a
  fresh request costs one process; every speed-up is against it).
* **Local workers**: `--nproc` real worker processes (burst, gloo, the cores split between them)
  behind `LongContextLM(..., cache_gib=...)`: a fresh request (prefill + query pass: the
  engine's time to the first token's logits), then a follow-up question on the same document
  (a cache hit: only the query pass over the cached shards). Fresh requests use documents of the
  same length with other tokens, so none of them hits the cache.
* **Simulated hosts** (`longctx.simulate`): each host's real work timed alone with the whole
  machine, the network modelled (`--gb-per-s`, `--latency-us`); fresh = prefill + query pass,
  follow-up = the query pass forward alone (what a cache hit runs: the question over every
  host's cached shard, then the exact merge of their (out, lse)).

Each figure is the median of `--repeats` runs, the range kept. The model is a random-weight
Llama made on the fly (4 layers, hidden 512, 8 / 2 heads, MLP 1792, as benchmarks/cpu_methods.py).
The machine is shared with other jobs: the JSON records its load average before and after.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import prefill_suite  # noqa: E402
from longctx.api import LongContextLM  # noqa: E402
from longctx.baseline import HFSDPABaseline, speedup  # noqa: E402
from longctx.compare import random_prompt  # noqa: E402
from longctx.models import load_model  # noqa: E402
from prefill_suite import Link  # noqa: E402

QUESTION_TOKENS = 32


def parse_args(argv=None):
    """Command-line options (defaults: the committed run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 32768], help="document tokens")
    parser.add_argument("--nproc", type=int, default=4, help="local workers and simulated hosts")
    parser.add_argument("--method", default="burst", help="an exact method (its cache serves any follow-up)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median kept)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=1792)
    parser.add_argument("--gb-per-s", type=float, default=10.0, help="simulated link bandwidth per host")
    parser.add_argument("--latency-us", type=float, default=20.0, help="simulated link latency")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and lengths, one run: for CI")
    parser.add_argument("--out", required=True, help="JSON file to write (the PNG goes beside it)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.lengths, args.repeats, args.nproc = [256, 512], 1, 2
        args.layers, args.hidden, args.heads, args.kv_heads, args.intermediate = 2, 64, 4, 2, 128
    return args


def median_row(seconds):
    """{"seconds": median, "min_s", "max_s", "runs_s"} of a list of timings."""
    return {"seconds": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds), "runs_s": seconds}


def local_rows(model_dir, args, length, vocab):
    """Fresh and follow-up time to first token on local workers (engine time: prefill + query)."""
    fresh, follow_up, cached = [], [], []
    with LongContextLM(model_dir, method=args.method, nproc=args.nproc, cache_gib=64) as lm:
        warm_doc, warm_query = random_prompt(vocab, min(length, 512), QUESTION_TOKENS, seed=1)
        lm.run_ids(warm_doc, warm_query, max_new_tokens=1)
        for repeat in range(args.repeats):
            doc_ids, query_ids = random_prompt(vocab, length, QUESTION_TOKENS, seed=1000 + repeat)
            first = lm.generate_prepared(lm.prepare_ids(doc_ids, query_ids, 1))
            fresh.append(first.ttft_s)
            _, other_query = random_prompt(vocab, 1, QUESTION_TOKENS, seed=2000 + repeat)
            again = lm.generate_prepared(lm.prepare_ids(doc_ids, other_query, 1))
            follow_up.append(again.ttft_s)
            cached.append(again.cached_tokens)
    assert all(count == length for count in cached), cached
    return [{"mode": "local workers", "request": "fresh", **median_row(fresh)},
            {"mode": "local workers", "request": "follow-up", **median_row(follow_up)}]


def simulated_rows(model, args, length, vocab, link):
    """Fresh (prefill + query pass) and follow-up (the query pass alone) on simulated hosts."""
    doc_ids, query_ids = random_prompt(vocab, length, QUESTION_TOKENS, seed=1000)
    _, details = prefill_suite.simulate_method(model, args.method, doc_ids, query_ids, args.nproc, link, args.repeats)
    fresh = details["runs_s"]
    prefill_s, query_s = details["forwards_s"]
    return [{"mode": "simulated", "request": "fresh", **median_row(fresh), "forwards_s": details["forwards_s"]},
            {"mode": "simulated", "request": "follow-up", "seconds": query_s, "prefill_s_skipped": prefill_s,
             "note": "the query pass forward of the median fresh run: what a cache hit runs"}]


def load_average():
    """The 1, 5 and 15 minute load averages (None where unknown)."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def main(argv=None):
    """Run the benchmark; writes JSON (and a PNG) and prints a Markdown table."""
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    link = Link(gb_per_s=args.gb_per_s, latency_us=args.latency_us)
    report = {"benchmark": "serve_cache", "smoke": args.smoke, "method": args.method, "nproc": args.nproc,
              "repeats": args.repeats, "question_tokens": QUESTION_TOKENS, "cpus": os.cpu_count(),
              "machine": platform.platform(), "torch": torch.__version__, "load_average_before": load_average(),
              "shared_machine": "the machine is shared with other jobs while this runs (see the load averages): "
                                "absolute times are noisy, ratios measured side by side less so",
              "model": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "kv_heads": args.kv_heads,
                        "intermediate": args.intermediate},
              "link": {"gb_per_s": args.gb_per_s, "latency_us": args.latency_us},
              "measured": "HF SDPA and local workers: wall-clock engine times on this machine; simulated hosts: "
                          "each host's compute measured alone", "modelled": "the simulated hosts' network",
              "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = prefill_suite.make_model(os.path.join(tmp, "model"), args.layers, args.hidden, args.heads,
                                             args.kv_heads, args.intermediate, max(args.lengths) + 1024)
        vocab = 256 if args.smoke else 32000
        vocab = min(vocab, json.load(open(os.path.join(model_dir, "config.json")))["vocab_size"])
        for length in args.lengths:
            doc_ids, query_ids = random_prompt(vocab, length, QUESTION_TOKENS, seed=1000)
            with HFSDPABaseline(model_dir) as baseline:
                hf = baseline.time(doc_ids, query_ids, repeats=args.repeats)
            rows = [{"mode": "measured", "request": "hf-sdpa fresh", **median_row(list(hf.seconds))}]
            rows += local_rows(model_dir, args, length, vocab)
            model = load_model(model_dir, torch.device("cpu"), torch.float32)
            rows += simulated_rows(model, args, length, vocab, link)
            del model
            for row in rows:
                row.update(length=length, speedup_vs_hf=speedup(rows[0]["seconds"], row["seconds"]))
            for mode in ("local workers", "simulated"):
                fresh, follow = [row for row in rows if row["mode"] == mode]
                follow["speedup_vs_fresh"] = fresh["seconds"] / max(follow["seconds"], 1e-9)
            report["rows"] += rows
            print(f"{length} tokens: " + ", ".join(f"{row['mode']} {row['request']} {row['seconds']:.3f} s"
                                                 for row in rows), flush=True)
    report["load_average_after"] = load_average()
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=1)
    print_table(report["rows"])
    plot(report["rows"], os.path.splitext(args.out)[0] + ".png", report)


def print_table(rows):
    """The README's Markdown table."""
    print("| tokens | HF SDPA fresh | local fresh | local follow-up (x fresh, x HF) | simulated fresh | "
          "simulated follow-up (x fresh, x HF) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for length in sorted({row["length"] for row in rows}):
        at = {(row["mode"], row["request"]): row for row in rows if row["length"] == length}
        hf = at[("measured", "hf-sdpa fresh")]
        cells = [f"{length:,}", f"{hf['seconds']:.3f} s"]
        for mode in ("local workers", "simulated"):
            fresh, follow = at[(mode, "fresh")], at[(mode, "follow-up")]
            cells += [f"{fresh['seconds']:.3f} s", f"{follow['seconds']:.3f} s ({follow['speedup_vs_fresh']:.0f}x, "
                                                   f"{follow['speedup_vs_hf']:.0f}x)"]
        print("| " + " | ".join(cells) + " |")


def plot(rows, path, report):
    """Time to first token against length, log scale: HF SDPA, fresh and follow-up per mode."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    series = [("measured", "hf-sdpa fresh", "HF SDPA fresh", "k-"), ("local workers", "fresh", "local fresh", "C0--"),
              ("local workers", "follow-up", "local follow-up", "C0-"), ("simulated", "fresh", "simulated fresh", "C1--"),
              ("simulated", "follow-up", "simulated follow-up", "C1-")]
    for mode, request, label, style in series:
        points = sorted((row["length"], row["seconds"]) for row in rows if (row["mode"], row["request"]) == (mode, request))
        ax.plot([p for p, _ in points], [s for _, s in points], style, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("document tokens")
    ax.set_ylabel("time to first token (s)")
    ax.set_title(f"{report['method']} on {report['nproc']} workers: fresh vs cached follow-up", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
