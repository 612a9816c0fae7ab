"""Prefill speed of every method against Hugging Face's SDPA forward, measured in one run.

Shared by `cpu_methods.py` (this machine's cores) and `gpu_suite.py` (one GPU), so a
simulated figure means the same on both. For each document length:

1. **Baseline** (measured): Hugging Face's own SDPA forward of the same model over the same
   document + question tokens, one process, the whole machine (`longctx.baseline`).
2. **longctx dense** (measured): the engine's dense method on one host, same tokens.
3. **Simulated P hosts** (measured compute, modelled network; `longctx.simulate`): every
   host's real prefill and query pass, one host at a time with the whole machine; critical
   path = per layer the slowest host, plus the communication each host receives at the
   stated link bandwidth, minus what posted transfers hide behind compute.

Every method is reported as time to the first answer token's logits (prefill + query pass)
and as a speed-up over the baseline measured in the same run. Methods run as their papers
define them with equal contiguous blocks (`--balance equal`: ring is the textbook ring,
star and ulysses equal shards, apb the published split); burst and allgather use their
zigzag layout, spava its zigzag virtual blocks; variants tuned by longctx's planner are labelled (`apb-balanced`).

The **video workload** (`run_video_local`, Spava's setting: a question about a long video) runs
a random-weight Qwen2.5-VL on real local workers: spava beside dense, burst and apb, each
timed from the video's patches to the first answer token's logits (frame-parallel vision
encoding + prefill + query pass) against transformers' own SDPA forward of the same model,
video and question (its vision encoder included), measured in the same run.
"""

import os
import statistics
import time

import numpy as np

from longctx.baseline import HFSDPABaseline, speedup
from longctx.compare import random_prompt
from longctx.config import RunConfig
from longctx.models.tiny import make_tiny_model
from longctx.simulate import Link, critical_path, simulate_hosts

METHODS = ("ring", "burst", "allgather", "ulysses", "star", "apb", "apb-balanced", "spava")
VIDEO_METHODS = ("burst", "apb", "spava")
QUESTION_TOKENS = 32
VIDEO_QUESTION = "What happens in this video, and in which order?"


def method_options(label):
    """(registered method name, RunConfig options) of a benchmark label."""
    if label == "apb-balanced":
        return "apb", {"balance": "auto"}
    return label, {"balance": "equal"}


def make_model(out_dir, layers, hidden, heads, kv_heads, intermediate, max_positions, seed=0):
    """A random-weight Llama of the given shape in `out_dir` (written once; reused if present)."""
    if not os.path.isfile(os.path.join(out_dir, "config.json")):
        make_tiny_model(out_dir, "llama", hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                        seed=seed, max_positions=max_positions, intermediate=intermediate)
    return out_dir


def make_video_model(out_dir, layers, hidden, heads, kv_heads, intermediate, max_positions, max_pixels, seed=0):
    """A random-weight Qwen2.5-VL of the given language-model shape in `out_dir` (written once),
    its processor bounding frames at `max_pixels`."""
    if not os.path.isfile(os.path.join(out_dir, "config.json")):
        make_tiny_model(out_dir, "qwen2_5_vl", hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                        seed=seed, max_positions=max_positions, intermediate=intermediate, max_pixels=max_pixels)
    return out_dir


def video_frames(count, side, seed=0):
    """Seeded random frames [count, side, side, 3] uint8 (a synthetic video)."""
    return np.random.default_rng(seed).integers(0, 256, (count, side, side, 3), dtype=np.uint8)


def time_hf_video(model_dir, doc_ids, query_ids, video, repeats=1, clock=time.perf_counter, threads=None):
    """Transformers' own SDPA forward of the Qwen2.5-VL at `model_dir` over the video prompt
    (`doc_ids` + `query_ids`, `video` a VideoPatches): vision encoder and language model, one
    process, `threads` torch threads (None: every core), `logits_to_keep=1`, timed by `clock`
    after one untimed warm-up. Returns {seconds, median_s, tokens, argmax}. Call it while no
    worker pool is alive."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.set_num_threads(threads or os.cpu_count() or 1)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32,
                                                               attn_implementation="sdpa").eval()
    ids = torch.tensor([list(doc_ids) + list(query_ids)])
    inputs = dict(input_ids=ids, pixel_values_videos=torch.tensor(video.pixels),
                  video_grid_thw=torch.tensor([video.grid]), second_per_grid_ts=torch.tensor([video.seconds_per_patch]),
                  mm_token_type_ids=2 * (ids == model.config.video_token_id).int(), use_cache=False, logits_to_keep=1)
    seconds = []
    with torch.inference_mode():
        for index in range(repeats + 1):
            start = clock()
            logits = model(**inputs).logits
            if index:
                seconds.append(clock() - start)
    return {"seconds": seconds, "median_s": statistics.median(seconds), "tokens": ids.shape[1],
            "argmax": int(logits[0, -1].argmax())}


def run_video_local(model_dir, grid, methods, repeats, side, progress=print):
    """Rows of the video workload on real local workers: for each (frames, [workers, ...]) of
    `grid`, a synthetic video of that many `side` x `side` frames (2 fps) and VIDEO_QUESTION;
    HF SDPA (measured first, no workers alive), dense on one worker, then every method of
    `methods` on each worker count. Each row: {length (prompt tokens before the question),
    frames, method, hosts, mode "video local workers", seconds (vision encoding + prefill +
    query pass, median of `repeats` after a warm-up), speedup_vs_hf, first_token}."""
    from longctx.api import LongContextLM
    from longctx.families.qwen2_5_vl import load_video, video_prompt
    from longctx.models import load_tokenizer

    rows = []
    cores = os.cpu_count() or 1
    for frames, host_counts in grid:
        video = load_video(video_frames(frames, side), model_dir, source_fps=2.0)
        doc_ids, query_ids = video_prompt(load_tokenizer(model_dir), video.grid, VIDEO_QUESTION)
        progress(f"video of {frames} frames ({len(doc_ids)} prompt tokens): HF SDPA (no workers running)")
        hf = time_hf_video(model_dir, doc_ids, query_ids, video, repeats)
        common = {"length": len(doc_ids), "frames": frames, "grid": list(video.grid), "mode": "video local workers"}
        rows.append({**common, "method": "hf-sdpa", "hosts": 1, "seconds": hf["median_s"], "speedup_vs_hf": 1.0,
                     "baseline": hf})
        for hosts in [1] + list(host_counts):
            labels = ["dense"] if hosts == 1 else list(methods)
            threads = max(1, cores // hosts)
            progress(f"video of {frames} frames: {hosts} local worker(s), {threads} thread(s) each")
            with LongContextLM(model_dir, method=labels[0], nproc=hosts, threads=threads, balance="equal") as lm:
                for label in labels:
                    times = []
                    for index in range(repeats + 1):
                        result = lm.generate(video=video, question=VIDEO_QUESTION, max_new_tokens=1, method=label)
                        if index:
                            times.append(result.ttft_s)
                    seconds = statistics.median(times)
                    rows.append({**common, "method": label, "hosts": hosts, "seconds": seconds, "runs_s": times,
                                 "speedup_vs_hf": speedup(hf["median_s"], seconds), "threads_per_worker": threads,
                                 "cores": cores, "first_token": result.tokens[0],
                                 "same_first_token_as_hf": result.tokens[0] == hf["argmax"]})
    return rows


def prompt(vocab_size, length):
    """Seeded random (doc_ids, query_ids): `length` document tokens and QUESTION_TOKENS question tokens."""
    return random_prompt(vocab_size, length, QUESTION_TOKENS, seed=length)


def simulate_method(model, label, doc_ids, query_ids, hosts, link, repeats):
    """Simulated `hosts`-host request of benchmark method `label` on `model` (longctx attention
    set): the median over `repeats` runs of the modelled critical path, with that run's
    per-host details."""
    name, options = method_options(label)
    device = next(model.parameters()).device
    config = RunConfig(model=model.name_or_path, method=name, nproc=hosts, **options)
    runs = []
    for _ in range(repeats):
        traces = simulate_hosts(model, config, doc_ids, query_ids, hosts, device)
        runs.append((critical_path(traces, link), traces))
    runs.sort(key=lambda run: run[0]["total_s"])
    path, traces = runs[len(runs) // 2]
    return path["total_s"], {
        "runs_s": [run[0]["total_s"] for run in runs],
        "forwards_s": path["forwards_s"],
        "host_tokens": [trace.tokens for trace in traces],
        "host_compute_s": path["compute_s"],
        "host_exposed_comm_s": path["exposed_comm_s"],
        "host_received_mb": [trace.received_bytes() / 1e6 for trace in traces],
    }


def parse_grid(items):
    """[(length, [hosts, ...]), ...] from strings "LENGTH:H1,H2,..." (e.g. "16384:2,4,8")."""
    grid = []
    for item in items:
        length, _, hosts = item.partition(":")
        try:
            grid.append((int(length), [int(h) for h in hosts.split(",") if h]))
        except ValueError:
            raise SystemExit(f"bad grid entry {item!r}: use LENGTH:HOSTS,HOSTS,... (e.g. 16384:2,4,8)") from None
    return grid


def run_simulated(model, grid, methods, link, repeats, progress=print):
    """Rows for every (length, host counts) of `grid`: HF SDPA, longctx dense and every
    (method, hosts) simulated. HF SDPA and dense get one untimed warm-up at the first length.

    `model` is a longctx-loaded Hugging Face model (its weights serve the HF SDPA baseline
    too, so both run the very same weights). Each row: {length, method, hosts, mode,
    seconds, speedup_vs_hf, ...details}; `mode` is "measured" (HF SDPA, dense) or
    "simulated". The caller sets the thread count (the whole machine).
    """
    baseline = HFSDPABaseline.of_model(model)
    rows = []
    for index, (length, host_counts) in enumerate(grid):
        doc_ids, query_ids = prompt(model.config.vocab_size, length)
        progress(f"{length} tokens: HF SDPA baseline")
        timing = baseline.time(doc_ids, query_ids, repeats=repeats, warmup=index == 0)
        hf_s = timing.median_s
        rows.append({"length": length, "method": "hf-sdpa", "hosts": 1, "mode": "measured", "seconds": hf_s,
                     "speedup_vs_hf": 1.0, "baseline": timing.to_dict()})
        progress(f"{length} tokens: longctx dense")
        if index == 0:
            simulate_method(model, "dense", doc_ids, query_ids, 1, link, 1)
        dense_s, details = simulate_method(model, "dense", doc_ids, query_ids, 1, link, repeats)
        rows.append({"length": length, "method": "dense", "hosts": 1, "mode": "measured", "seconds": dense_s,
                     "speedup_vs_hf": speedup(hf_s, dense_s), **details})
        for hosts in host_counts:
            for label in methods:
                if not runs_on(model.config, label, hosts):
                    continue
                progress(f"{length} tokens: {label} on {hosts} simulated hosts")
                started = time.perf_counter()
                seconds, details = simulate_method(model, label, doc_ids, query_ids, hosts, link, repeats)
                rows.append({"length": length, "method": label, "hosts": hosts, "mode": "simulated",
                             "seconds": seconds, "speedup_vs_hf": speedup(hf_s, seconds),
                             "bench_wall_s": time.perf_counter() - started, **details})
    return rows


def runs_on(model_config, label, hosts):
    """False when the method cannot run this model on `hosts` hosts (e.g. Ulysses heads)."""
    from longctx.errors import LongCtxError
    from longctx.registry import get_method

    name, options = method_options(label)
    try:
        get_method(name, RunConfig(model="-", method=name, nproc=hosts, **options)).check(model_config, hosts)
    except LongCtxError:
        return False
    return True


def link_description(link):
    """Human-readable link model."""
    return (f"{link.gb_per_s:g} GB/s per host, {link.latency_us:g} us per message, "
            f"{'posted transfers overlap compute' if link.overlap else 'no overlap'}")


def print_table(rows, mode="simulated"):
    """A table of speed-ups over HF SDPA: one line per (length, method) of `mode`, one column per
    host count. The HF SDPA row of the same mode is the baseline (else the measured one)."""
    lengths = sorted({row["length"] for row in rows if row["mode"] == mode})
    hosts = sorted({row["hosts"] for row in rows if row["mode"] == mode and row["method"] != "hf-sdpa"})
    for length in lengths:
        at = [row for row in rows if row["length"] == length]
        bases = [row for row in at if row["method"] == "hf-sdpa"]
        base = next((row for row in bases if row["mode"] == mode), bases[0])
        print(f"\n{length} document tokens, {mode}: speed-up over HF SDPA ({base['seconds']:.3f} s)")
        print(f"{'method':<14}" + "".join(f"{f'P={p}':>12}" for p in hosts))
        for method in dict.fromkeys(row["method"] for row in at if row["mode"] == mode):
            if method == "hf-sdpa":
                continue
            cells = {row["hosts"]: row for row in at if row["method"] == method and row["mode"] == mode}
            print(f"{method:<14}" + "".join(
                f"{cells[p]['speedup_vs_hf']:>11.2f}x" if p in cells else f"{'-':>12}" for p in hosts))
        dense = next((row for row in at if row["method"] == "dense"), None)
        if dense and mode == "simulated":
            print(f"longctx dense (1 host): {dense['seconds']:.3f} s = {dense['seconds'] / base['seconds']:.2f}x "
                  f"HF SDPA's time")


def plot(rows, path, title):
    """Speed-up over HF SDPA against host count, one panel per length: simulated hosts solid,
    real local workers dashed, one colour per method. PNG at `path` (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        return None
    shown = [row for row in rows if row["method"] not in ("hf-sdpa", "dense")]
    lengths = sorted({row["length"] for row in shown})
    methods = list(dict.fromkeys(row["method"] for row in shown))
    colours = {method: f"C{index}" for index, method in enumerate(methods)}
    styles = {"simulated": "-", "local workers": "--"}
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths) + 1.5, 3.6), squeeze=False)
    for ax, length in zip(axes[0], lengths):
        at = [row for row in shown if row["length"] == length]
        for method, mode in dict.fromkeys((row["method"], row["mode"]) for row in at):
            points = sorted((row["hosts"], row["speedup_vs_hf"]) for row in at
                            if row["method"] == method and row["mode"] == mode)
            ax.plot([p for p, _ in points], [s for _, s in points], marker="o", color=colours[method],
                    linestyle=styles.get(mode, ":"))
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_title(f"{length:,} tokens")
        ax.set_xlabel("hosts")
        ax.set_xscale("log", base=2)
        hosts = sorted({row["hosts"] for row in at})
        ax.set_xticks(hosts, [str(h) for h in hosts])
        ax.set_ylabel("speed-up over HF SDPA")
    handles = [Line2D([], [], color=colours[m], marker="o", label=m) for m in methods]
    handles += [Line2D([], [], color="black", linestyle=style, label=mode) for mode, style in styles.items()
                if any(row["mode"] == mode for row in shown)]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["run_simulated", "run_video_local", "parse_grid", "simulate_method", "make_model", "make_video_model",
           "video_frames", "time_hf_video", "prompt", "print_table", "plot", "link_description", "method_options",
           "runs_on", "METHODS", "VIDEO_METHODS", "Link"]
