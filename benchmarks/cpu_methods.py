"""Every method's prefill on this CPU machine against HF SDPA, measured two ways in one run.

    python benchmarks/cpu_methods.py                 # the committed results (about 45 min on 2 cores)
    python benchmarks/cpu_methods.py --smoke         # seconds: tiny shapes, for CI
    python benchmarks/cpu_methods.py --table-from benchmarks/results/cpu_methods.json   # the README tables

(a) **Local workers** (wall clock): P real worker processes on this machine, torch.distributed
    over gloo, the cores split evenly between them (so with P > cores they time-share);
    every method on one pool, time to first token logits = prefill + query pass.
(b) **Simulated hosts** (`prefill_suite.run_simulated`): each host's real work timed alone
    with the whole machine, network modelled at `--gb-per-s` (default 10 GB/s, a 100 Gb/s
    cluster link) and `--latency-us`; see `longctx.simulate` for what is measured and what
    is modelled.

Both against Hugging Face's SDPA forward of the same model and tokens with every core,
measured in the same run. The model is a random-weight Llama made on the fly (default 4
layers, hidden 512, 8 heads / 2 KV heads, MLP 1792; 4 layers keep the run under 20 minutes on
2 cores, and every layer does the same work). Simulated grid: 4K and 16K tokens on 2, 4 and 8
hosts, 32K on 4; local workers: 4K and 8K on 2 and 4.

(c) **Video workload** (`prefill_suite.run_video_local`): spava beside dense, burst and apb on
    real local workers answering a question about a synthetic video (default 64 frames of
    448 x 448, 8,195 prompt tokens) with a random-weight Qwen2.5-VL of the same language-model
    shape, against transformers' own SDPA forward of the same video and question.

Every measurement is the median of `--repeats` runs (default 3; a single run on a shared
2-core machine can be 20 % off), with the slowest and fastest kept (`min_s`, `max_s`) and the
speed-up's range (`speedup_range`: HF SDPA's median over the row's slowest and fastest run).
Writes JSON and PNG (the text workloads) under benchmarks/results/, and prints the README's
Markdown tables ("median (min-max)"), which `--table-from JSON` prints again from a saved run.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import prefill_suite  # noqa: E402
from longctx.api import LongContextLM  # noqa: E402
from longctx.baseline import HFSDPABaseline, speedup  # noqa: E402
from longctx.errors import LongCtxError  # noqa: E402
from longctx.models import load_model  # noqa: E402
from prefill_suite import Link  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv=None):
    """Command-line options (defaults: the committed run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", nargs="+", default=["4096:2,4,8", "16384:2,4,8", "32768:4"],
                        help="simulated hosts: LENGTH:HOSTS,... (document tokens, host counts)")
    parser.add_argument("--local-grid", nargs="*", default=["4096:2,4", "8192:2,4"],
                        help="real local workers: LENGTH:WORKERS,...")
    parser.add_argument("--methods", default=",".join(prefill_suite.METHODS))
    parser.add_argument("--video-grid", nargs="*", default=["64:2,4"],
                        help="video workload on local workers: FRAMES:WORKERS,... (none: skip it)")
    parser.add_argument("--video-side", type=int, default=448, help="video frames are SIDE x SIDE pixels")
    parser.add_argument("--video-methods", default=",".join(prefill_suite.VIDEO_METHODS),
                        help="methods of the video workload (dense always runs on one worker)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median, min, max)")
    parser.add_argument("--gb-per-s", type=float, default=10.0, help="modelled link bandwidth per host")
    parser.add_argument("--latency-us", type=float, default=20.0, help="modelled latency per message")
    parser.add_argument("--layers", type=int, default=4,
                        help="decoder layers (every layer does the same work, so ratios do not depend on it)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=1792)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and lengths (CI)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "cpu_methods.json"))
    parser.add_argument("--table-from", default=None, metavar="JSON",
                        help="print the README tables of a saved run and exit (measures nothing)")
    args = parser.parse_args(argv)
    args.grid, args.local_grid = prefill_suite.parse_grid(args.grid), prefill_suite.parse_grid(args.local_grid)
    args.video_grid = prefill_suite.parse_grid(args.video_grid)
    if args.smoke:
        args.grid, args.local_grid = [(256, [2])], [(256, [2])]
        args.video_grid, args.video_side = [(64, [2])], 56
        args.layers, args.hidden, args.heads, args.kv_heads, args.intermediate = 2, 64, 4, 2, 128
    return args


def run_local(model, model_dir, grid, methods, repeats, progress=print):
    """Rows of real local-worker runs (workers load `model_dir`): median prefill + query seconds
    per (length, workers, method) of `grid`, with HF SDPA (on `model`, the same weights in this process)
    measured before the pools start, when no worker is alive."""
    rows = []
    cores = os.cpu_count() or 1
    baseline = HFSDPABaseline.of_model(model)
    for length, host_counts in grid:
        doc_ids, query_ids = prefill_suite.prompt(model.config.vocab_size, length)
        progress(f"{length} tokens: HF SDPA baseline (no workers running)")
        timing = baseline.time(doc_ids, query_ids, repeats=repeats, warmup=True)
        hf_s = timing.median_s
        rows.append({"length": length, "method": "hf-sdpa", "hosts": 1, "mode": "local workers", "seconds": hf_s,
                     "speedup_vs_hf": 1.0, "baseline": timing.to_dict()})
        for hosts in host_counts:
            labels = [label for label in methods if label != "apb-balanced"]
            threads = max(1, cores // hosts)
            progress(f"{length} tokens: {hosts} local workers, {threads} thread(s) each, on {cores} cores")
            with LongContextLM(model_dir, method="burst", nproc=hosts, threads=threads, balance="equal") as lm:
                for label in labels:
                    try:
                        lm.run_ids(doc_ids, query_ids, max_new_tokens=1, method=label)  # warm-up
                    except LongCtxError as exc:
                        progress(f"  {label}: skipped ({exc})")
                        continue
                    times = []
                    for _ in range(repeats):
                        raw = lm.run_ids(doc_ids, query_ids, max_new_tokens=1, method=label)
                        times.append(raw.ttft_s)
                    seconds = statistics.median(times)
                    rows.append({"length": length, "method": label, "hosts": hosts, "mode": "local workers",
                                 "seconds": seconds, "runs_s": times, "hf_sdpa_s": hf_s,
                                 "speedup_vs_hf": speedup(hf_s, seconds), "threads_per_worker": threads,
                                 "cores": cores})
    return rows


def runs_of(row):
    """The timed runs (seconds) behind a row's median."""
    return row.get("runs_s") or (row.get("baseline") or {}).get("seconds") or [row["seconds"]]


def add_spread(rows):
    """Give every row min_s / max_s of its runs and, for methods, speedup_range: [HF SDPA's
    median over the row's slowest run, over its fastest]. In place; returns rows."""
    for row in rows:
        runs = runs_of(row)
        row["min_s"], row["max_s"] = min(runs), max(runs)
        if row["method"] != "hf-sdpa":
            hf_s = row["speedup_vs_hf"] * row["seconds"]
            row["speedup_range"] = [hf_s / row["max_s"], hf_s / row["min_s"]]
    return rows


def markdown_tables(rows):
    """The README's tables: per mode, one line per method, one column per (length, hosts),
    cells "median (min-max)" speed-ups over HF SDPA; then HF SDPA's seconds per length."""
    out = []
    for mode, title in (("simulated", "Simulated hosts"), ("local workers", "Real local workers")):
        mine = [row for row in rows if row["mode"] == mode and row["method"] not in ("hf-sdpa", "dense")]
        if not mine:
            continue
        columns = sorted({(row["length"], row["hosts"]) for row in mine})
        out.append(f"{title}: speed-up over HF SDPA, median of the runs (slowest-fastest)\n")
        out.append("| method | " + " | ".join(f"{length // 1024}K, {hosts}" for length, hosts in columns) + " |")
        out.append("| --- |" + " --- |" * len(columns))
        for method in dict.fromkeys(row["method"] for row in mine):
            cells = {(row["length"], row["hosts"]): row for row in mine if row["method"] == method}
            out.append(f"| {method} | " + " | ".join(
                f"{cells[c]['speedup_vs_hf']:.2f}x ({cells[c]['speedup_range'][0]:.2f}-{cells[c]['speedup_range'][1]:.2f})"
                if c in cells else "-" for c in columns) + " |")
        hf_mode = mode if any(r["mode"] == mode and r["method"] == "hf-sdpa" for r in rows) else "measured"
        hf = [row for row in rows if row["method"] == "hf-sdpa" and row["mode"] == hf_mode]
        out.append("\nHF SDPA: " + ", ".join(f"{row['length'] // 1024}K {row['seconds']:.2f} s "
                                             f"({row['min_s']:.2f}-{row['max_s']:.2f})" for row in hf))
        dense = [row for row in rows if row["method"] == "dense" and row["mode"] == "measured"]
        if mode == "simulated" and dense:
            out.append("longctx dense on one host: " + ", ".join(
                f"{row['length'] // 1024}K {1 / row['speedup_vs_hf']:.2f}x HF's time"
                for row in dense))
        out.append("")
    return "\n".join(out)


def main(argv=None):
    """Measure, print the tables, write JSON and PNG (or, with --table-from, print a saved run's tables)."""
    args = parse_args(argv)
    if args.table_from:
        with open(args.table_from) as handle:
            print(markdown_tables(add_spread(json.load(handle)["rows"])))
        return None
    methods = [name for name in args.methods.split(",") if name]
    link = Link(gb_per_s=args.gb_per_s, latency_us=args.latency_us)
    started = time.perf_counter()

    def progress(text):
        print(f"[{time.perf_counter() - started:7.1f} s] {text}", file=sys.stderr, flush=True)

    max_len = max([length for length, _ in args.grid + args.local_grid] + [0]) + prefill_suite.QUESTION_TOKENS + 8
    with tempfile.TemporaryDirectory(prefix="longctx-bench-") as tmp:
        model_dir = prefill_suite.make_model(os.path.join(tmp, "model"), args.layers, args.hidden, args.heads,
                                             args.kv_heads, args.intermediate, max_positions=max_len)
        torch.set_num_threads(os.cpu_count() or 1)
        model = load_model(model_dir, torch.device("cpu"), torch.float32)
        rows = prefill_suite.run_simulated(model, args.grid, methods, link, args.repeats, progress)
        local = run_local(model, model_dir, args.local_grid, methods, args.repeats, progress)
        del model
        video = []
        if args.video_grid:
            video_dir = prefill_suite.make_video_model(os.path.join(tmp, "video-model"), args.layers, args.hidden,
                                                       args.heads, args.kv_heads, args.intermediate, 32768,
                                                       max_pixels=args.video_side**2)
            video_methods = [name for name in args.video_methods.split(",") if name]
            video = prefill_suite.run_video_local(video_dir, args.video_grid, video_methods, args.repeats,
                                                  args.video_side, progress)
    report = {
        "benchmark": "cpu_methods",
        "command": "python benchmarks/cpu_methods.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__},
        "model": {"family": "llama (random weights)", "layers": args.layers, "hidden": args.hidden,
                  "heads": args.heads, "kv_heads": args.kv_heads, "intermediate": args.intermediate,
                  "dtype": "float32"},
        "question_tokens": prefill_suite.QUESTION_TOKENS,
        "metric": "seconds to the first answer token's logits: HF SDPA one forward over document + question; "
                  "longctx prefill + query pass",
        "measured": "HF SDPA and longctx dense (whole machine); every simulated host's compute, alone on the "
                    "whole machine; local workers' wall clock",
        "modelled": f"simulated hosts' network: {prefill_suite.link_description(link)}; hosts meet at every "
                    f"layer with communication",
        "link": {"gb_per_s": link.gb_per_s, "latency_us": link.latency_us, "overlap": link.overlap},
        "video": {"frames_side": args.video_side, "fps": 2, "question": prefill_suite.VIDEO_QUESTION,
                  "model": "qwen2_5_vl (random weights), the language-model shape above, a 2-layer vision encoder",
                  "metric": "seconds from the video's patches to the first answer token's logits: HF SDPA one "
                            "forward (vision encoder included); longctx vision encoding + prefill + query pass"},
        "repeats": args.repeats,
        "rows": add_spread(rows + local + video),
        "wall_s": time.perf_counter() - started,
    }
    prefill_suite.print_table(rows, "simulated")
    if local:
        prefill_suite.print_table(local, "local workers")
    if video:
        prefill_suite.print_table(video, "video local workers")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=1)
    png = prefill_suite.plot(rows + local, os.path.splitext(args.out)[0] + ".png",
                             f"CPU ({os.cpu_count()} cores), {args.layers}-layer random Llama, "
                             f"simulated hosts on {prefill_suite.link_description(link)}")
    print("\n" + markdown_tables(report["rows"]))
    print(f"\nwrote {args.out}" + (f" and {png}" if png else "") + f" in {report['wall_s']:.0f} s")
    return report


if __name__ == "__main__":
    main()
