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
zigzag layout, spava its zigzag virtual blocks (on the same text workload: the video
workload needs the Qwen2.5-VL path, issue 14); variants tuned by longctx's planner are labelled (`apb-balanced`).
"""

import os
import time

from longctx.baseline import HFSDPABaseline, speedup
from longctx.compare import random_prompt
from longctx.config import RunConfig
from longctx.models.tiny import make_tiny_model
from longctx.simulate import Link, critical_path, simulate_hosts

METHODS = ("ring", "burst", "allgather", "ulysses", "star", "apb", "apb-balanced", "spava")
QUESTION_TOKENS = 32


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


__all__ = ["run_simulated", "parse_grid", "simulate_method", "make_model", "prompt", "print_table", "plot",
           "link_description", "method_options", "runs_on", "METHODS", "Link"]
