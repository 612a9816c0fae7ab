"""Spava's speed table on simulated hosts: the video workload (vision encoder included).

    python benchmarks/spava_speed.py --out benchmarks/results/spava_speed.json   # the README's table (about 15 min on 2 CPU cores)
    python benchmarks/spava_speed.py --smoke --out /tmp/spava_smoke.json          # a small version (tests/test_benchmarks.py)

The paper (arXiv 2601.21444, 8 GPUs, Qwen2.5-VL) reports Spava 12.72x over FlashAttention,
1.70x over a ZigZag ring and 1.18x over APB, and a cumulative ablation (no overlap, anchor on
one host, no fused query pass, no zigzag, whole video on every host). This script measures
the same comparison on a random-weight Qwen2.5-VL of one shape and one synthetic video:

- **HF SDPA** (the dense baseline): transformers' own `Qwen2_5_VLForConditionalGeneration`
  forward over the video and the question, one process with every core, measured.
- **spava, burst (the zigzag ring), apb** at 2, 4 and 8 hosts, and the **ablation chain** of
  spava at 8 hosts (each switch as the reference code defines it, cumulative in its order:
  `spava.method`'s docstring), all on simulated hosts (`longctx.simulate`): every host's own
  work runs alone on this machine through the unmodified engine (its share of the frames through
  the vision encoder, its prefill, the query pass), timed; the network is modelled (`--gb-per-s`,
  `--latency-us`). The time of a request is its modelled critical path.

What is measured and what is modelled is in the JSON (`benchmarks/results/spava_speed.json`,
per-host compute and exposed communication of every run), with a PNG beside it.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from benchmarks import prefill_suite  # noqa: E402
from longctx.baseline import speedup  # noqa: E402
from longctx.config import RunConfig  # noqa: E402
from longctx.families.qwen2_5_vl import load_video, video_prompt  # noqa: E402
from longctx.models import load_model, load_tokenizer  # noqa: E402
from longctx.simulate import Link, critical_path, simulate_hosts  # noqa: E402

PAPER_RATIOS = {"burst": 1.70, "apb": 1.18}  # spava's speed-up over them at 8 hosts (arXiv 2601.21444)
# The cumulative ablation chain: (label, spava options added at this step, what the step removes).
ABLATIONS = (
    ("spava", {}, "Spava as published"),
    ("no overlap", {"overlap": False}, "every all-gather waited for as soon as it is posted (reference 'no')"),
    ("+ anchor on one host", {"anchor_sharding": False}, "host 0 caches the whole anchor (reference 'na')"),
    ("+ no fused query", {"fused_query": False}, "prefill without the question, separate query pass (reference 'nf')"),
    ("+ no zigzag", {"layout": "contiguous"}, "W blocks, one per host, 2 l_p each (reference 'nz')"),
    ("+ whole video on every host", {"frame_parallel": False}, "no frame-parallel encoder (reference 'nv')"),
)


def parse_args(argv=None):
    """Options; the defaults are the README's run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True,
                   help="JSON file to write, the PNG beside it (required, so no run overwrites the committed results by accident)")
    p.add_argument("--frames", type=int, default=4096, help="video frames (2 fps)")
    p.add_argument("--side", type=int, default=56, help="frames are SIDE x SIDE pixels (56: 4 tokens a frame pair)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--hosts", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--repeats", type=int, default=1, help="runs per point; the median is reported (CPU time varies "
                   "little between runs)")
    p.add_argument("--gb-per-s", type=float, default=10.0, help="modelled link, GB/s per host")
    p.add_argument("--latency-us", type=float, default=20.0, help="modelled latency per message")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="cpu: the CPU seconds of one thread (torch on 1 thread, `time.thread_time`) for HF SDPA and "
                        "every host alike, which other users of a shared machine do not inflate; wall: wall time "
                        "with every core")
    p.add_argument("--smoke", action="store_true", help="a small, fast version (CI)")
    args = p.parse_args(argv)
    if args.smoke:
        args.frames, args.layers, args.hidden, args.heads, args.intermediate, args.repeats = 512, 2, 64, 4, 128, 1
    if max(args.hosts) != 8 and not args.smoke:
        p.error("the ablation chain runs at 8 hosts: include 8 in --hosts")
    return args


def clock_of(args):
    """(time source, torch threads) of --clock."""
    return (time.thread_time, 1) if args.clock == "cpu" else (time.perf_counter, os.cpu_count() or 1)


def simulate(model, config, doc_ids, query_ids, video, hosts, link, repeats, clock):
    """(median modelled seconds, details of the median run) of `config` on `hosts` simulated hosts."""
    device = next(model.parameters()).device
    runs = []
    for _ in range(repeats):
        traces = simulate_hosts(model, config, doc_ids, query_ids, hosts, device, media=video, clock=clock)
        runs.append((critical_path(traces, link), traces))
    runs.sort(key=lambda run: run[0]["total_s"])
    path, traces = runs[len(runs) // 2]
    return path["total_s"], {"runs_s": [run[0]["total_s"] for run in runs], "forwards_s": path["forwards_s"],
                             "forwards": ["vision encoder", "prefill"] + (["query pass"] if len(path["forwards_s"]) > 2
                                                                          else []),
                             "host_tokens": [trace.tokens for trace in traces],
                             "host_compute_s": path["compute_s"], "host_exposed_comm_s": path["exposed_comm_s"],
                             "host_received_mb": [trace.received_bytes() / 1e6 for trace in traces]}


def run(args, model_dir, progress=print):
    """The report: HF SDPA measured, the methods and the ablation chain simulated."""
    clock, threads = clock_of(args)
    torch.set_num_threads(threads)
    video = load_video(prefill_suite.video_frames(args.frames, args.side), model_dir, source_fps=2.0)
    doc_ids, query_ids = video_prompt(load_tokenizer(model_dir), video.grid, prefill_suite.VIDEO_QUESTION)
    progress(f"{args.frames} frames, {len(doc_ids)} prompt tokens: HF SDPA (vision encoder + language model)")
    hf = prefill_suite.time_hf_video(model_dir, doc_ids, query_ids, video, args.repeats, clock, threads)
    model = load_model(model_dir, torch.device("cpu"), torch.float32)
    link = Link(gb_per_s=args.gb_per_s, latency_us=args.latency_us)
    simulate(model, RunConfig(model=model_dir, method="spava"), doc_ids, query_ids, video, 2, link, 1, clock)  # warm-up
    rows = []
    for hosts in args.hosts:
        for method in ("spava", "burst", "apb"):
            progress(f"{method} on {hosts} simulated hosts")
            seconds, details = simulate(model, RunConfig(model=model_dir, method=method), doc_ids, query_ids, video,
                                        hosts, link, args.repeats, clock)
            rows.append({"method": method, "hosts": hosts, "seconds": seconds, "speedup_vs_hf": speedup(hf["median_s"],
                                                                                                       seconds),
                         **details})
    chain, options = [], {}
    hosts = max(args.hosts)
    for label, added, removes in ABLATIONS:
        options.update(added)
        progress(f"ablation at {hosts} hosts: {label}")
        seconds, details = simulate(model, RunConfig(model=model_dir, method="spava", **options), doc_ids, query_ids,
                                    video, hosts, link, args.repeats, clock)
        chain.append({"step": label, "removes": removes, "options": dict(options), "hosts": hosts,
                      "seconds": seconds, "speedup_vs_hf": speedup(hf["median_s"], seconds), **details})
    at = {row["method"]: row["seconds"] for row in rows if row["hosts"] == hosts}
    ratios = {name: at[name] / at["spava"] for name in PAPER_RATIOS}
    return {
        "workload": {"frames": args.frames, "frame_side": args.side, "source_fps": 2.0, "grid": list(video.grid),
                     "prompt_tokens": len(doc_ids), "question_tokens": len(query_ids),
                     "question": prefill_suite.VIDEO_QUESTION},
        "model": {"family": "qwen2_5_vl", "weights": "random", "layers": args.layers, "hidden": args.hidden,
                  "heads": args.heads, "kv_heads": args.kv_heads, "intermediate": args.intermediate,
                  "vision": "2 blocks, 32 wide (longctx tiny-model's vision tower)"},
        "measured": "HF SDPA: transformers' own forward (vision encoder + language model, one process, "
                    "logits_to_keep=1), median of repeats after a warm-up. Methods: each simulated host's work "
                    "(its share of the frames through the vision encoder, its prefill, the query pass) run alone "
                    "on this machine through the unmodified engine, timed per layer. Both timed by the same clock: "
                    + ("the CPU time of one thread (torch on 1 thread, time.thread_time), so that the other users "
                       "of this shared machine do not inflate it" if args.clock == "cpu" else
                       "wall time, every core"),
        "modelled": f"the network: {prefill_suite.link_description(link)}; hosts meet at every layer that "
                    "communicates (longctx.simulate.critical_path)",
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
        "smoke": args.smoke,
        "hf_sdpa": hf,
        "methods": rows,
        "ablation": chain,
        "spava_over_at_8_hosts": {name: {"measured": ratios[name], "paper": PAPER_RATIOS[name]}
                                  for name in PAPER_RATIOS},
    }


def print_report(report):
    """The two tables, as text."""
    hosts = sorted({row["hosts"] for row in report["methods"]})
    print(f"\n{report['workload']['prompt_tokens']} prompt tokens ({report['workload']['frames']} frames): "
          f"speed-up over HF SDPA ({report['hf_sdpa']['median_s']:.3f} s), simulated hosts")
    print(f"{'method':<10}" + "".join(f"{f'P={p}':>10}" for p in hosts))
    for method in ("spava", "burst", "apb"):
        cells = {row["hosts"]: row["speedup_vs_hf"] for row in report["methods"] if row["method"] == method}
        print(f"{method:<10}" + "".join(f"{cells[p]:>9.2f}x" for p in hosts))
    for name, ratio in report["spava_over_at_8_hosts"].items():
        print(f"spava over {name} at {max(hosts)} hosts: {ratio['measured']:.2f}x (paper {ratio['paper']:.2f}x)")
    print(f"\nablation chain at {report['ablation'][0]['hosts']} hosts (cumulative)")
    for step in report["ablation"]:
        print(f"{step['step']:<30} {step['seconds']:>8.3f} s {step['speedup_vs_hf']:>7.2f}x HF SDPA")


def plot(report, path):
    """Two panels: speed-up over HF SDPA against hosts per method; the ablation chain's seconds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method in ("spava", "burst", "apb"):
        points = sorted((row["hosts"], row["speedup_vs_hf"]) for row in report["methods"] if row["method"] == method)
        left.plot([p for p, _ in points], [s for _, s in points], marker="o", label=method)
    left.axhline(1.0, color="grey", linewidth=0.8)
    left.set_xscale("log", base=2)
    hosts = sorted({row["hosts"] for row in report["methods"]})
    left.set_xticks(hosts, [str(h) for h in hosts])
    left.set_xlabel("simulated hosts")
    left.set_ylabel("speed-up over HF SDPA")
    left.legend(fontsize=8)
    left.set_title(f"{report['workload']['prompt_tokens']:,} video tokens", fontsize=9)
    steps = report["ablation"]
    right.barh(range(len(steps))[::-1], [step["seconds"] for step in steps], color="C0")
    right.set_yticks(range(len(steps))[::-1], [step["step"] for step in steps], fontsize=8)
    right.set_xlabel("modelled seconds to the first token")
    right.set_title(f"cumulative ablation, {steps[0]['hosts']} hosts", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = prefill_suite.make_video_model(os.path.join(tmp, "video-model"), args.layers, args.hidden,
                                                   args.heads, args.kv_heads, args.intermediate,
                                                   max_positions=4 * args.frames + 1024, max_pixels=args.side ** 2)
        report = run(args, model_dir, progress=lambda text: print(text, flush=True))
    report["bench_wall_s"] = time.time() - started
    report["command"] = "python benchmarks/spava_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=1)
    report["png"] = plot(report, os.path.splitext(args.out)[0] + ".png")
    print_report(report)
    print(f"\nwrote {args.out}" + (f" and {report['png']}" if report["png"] else ""))


if __name__ == "__main__":
    main()
