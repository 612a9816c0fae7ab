"""The communication model of `longctx.simulate` checked against a real, shaped link.

    python benchmarks/comm_model.py --out /tmp/comm_model.json     # ~10 minutes on 2 cores, as root
    python benchmarks/comm_model.py --smoke --out /tmp/smoke.json  # one small case (CI)

Two machines are two network namespaces on a private bridge (`tests/multinode/netbed.py`);
each node's link is shaped with a token bucket (`tc tbf`) to each rate of --rates (Gbit/s, each
direction). For each rate one torchrun job of 2 nodes x --workers-per-node ranks runs every
method of --methods at every length of --lengths on a random-weight Llama (gloo, CPU), with
every collective timed directly on every rank (`benchmarks/comm_probe.py`). Nothing is
inferred from wall clock minus compute, so the other work on a shared machine moves compute
times, not the comparison (the times are taken with the machine's monotonic clock, which every
namespace shares).

For each collective on each rank: it can start once every rank it receives from has posted it
(`start`); the **measured** communication is the time from `start`, or from when the rank
began to wait if later, until the wait returned: the part no compute covered. The
**modelled** time is what `longctx.simulate.Link` says for the same bytes received and sent,
message count and overlap window (the compute between `start` and the wait) on a link of the
shaped rate, twice: with the defaults the README's simulated hosts use (full duplex, 20 us per
message, no limit of the host's own) and with the link as measured (`calibrated`: half duplex,
as gloo's TCP pairs are, and the latency and the host's own rate per kind of collective that
a first job measures on the unshaped link, `comm_probe.calibrate`). Both are summed per rank and forward, divided by the
decoder layers, and averaged over the ranks; the table gives prefill and query pass per
layer, and the ratios.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "multinode"))

from longctx.models.tiny import make_tiny_model  # noqa: E402
from longctx.simulate import Link, Transfer  # noqa: E402
from netbed import Bed, unavailable  # noqa: E402

PROBE = os.path.join(REPO, "benchmarks", "comm_probe.py")
WITHIN = 0.25  # the model counts as right when modelled / measured is within 1 +- this
VISIBLE_S = 1e-3  # rows whose measured communication is below this per layer are hidden: no ratio


def parse_args(argv=None):
    """Command-line options (defaults: the committed run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="0.5,1,2", help="link rates to shape to, Gbit/s per direction")
    parser.add_argument("--lengths", default="4096,8192,16384", help="document tokens")
    parser.add_argument("--methods", default="ring,burst,allgather,ulysses,apb")
    parser.add_argument("--workers-per-node", type=int, default=1)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--latency-us", type=float, default=None,
                        help="the model's latency per message (default: longctx.simulate.Link's)")
    parser.add_argument("--traces", default=None, help="also keep every rank's records in this directory")
    parser.add_argument("--smoke", action="store_true", help="one rate, one short length, two methods (CI)")
    parser.add_argument("--out", required=True, help="JSON results file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rates, args.lengths, args.methods, args.layers = "1", "512", "ring,allgather", 1
    return args


def torchrun_job(bed, args, model, out, rate, probe_args):
    """Run the probe with `probe_args` on both nodes (the link shaped to `rate`, None: not
    shaped); returns every rank's records (none for a calibration)."""
    for node in bed.nodes.values():
        node.shape(rate)
    command = ["torchrun", "--nnodes", "2", "--nproc-per-node", str(args.workers_per_node), "--rdzv-backend", "c10d",
               "--rdzv-endpoint", "nodea:29600", "--rdzv-id", uuid.uuid4().hex[:12], PROBE, "--model", model,
               "--out", out, *probe_args]
    procs = [node.popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for node in bed.nodes.values()]
    outputs = [proc.communicate(timeout=3600)[0] for proc in procs]
    for proc, output in zip(procs, outputs):
        if proc.returncode:
            raise SystemExit(f"the probe failed:\n{output[-4000:]}")
    if "--calibrate" in probe_args:
        return []
    world = 2 * args.workers_per_node
    records = []
    for rank in range(world):
        with open(os.path.join(out, f"rank{rank}.json")) as handle:
            records.append(json.load(handle))
    return records


def compare(records, links, layers):
    """Rows (one per run and forward) of measured against modelled communication per layer, one
    modelled figure per entry of `links` (name -> Link)."""
    world = len(records)
    rows = {}
    for index in range(len(records[0])):
        ops = [records[rank][index] for rank in range(world)]
        assert len({(op["run"], op["kind"]) for op in ops}) == 1, "the ranks' collectives differ"
        for rank, op in enumerate(ops):
            if op["forward"] not in (0, 1):
                continue
            start = max(ops[peer]["posted"] for peer in {*op["peers"], rank})
            waited_from = max(op["wait"], start)
            measured = max(0.0, op["done"] - waited_from)
            window = max(0.0, op["wait"] - start)
            posted_kind = op["kind"] in ("exchange", "all_gather_async")
            transfer = Transfer(op["nbytes"], op["messages"], window if posted_kind else None, op["sent"],
                                op["model_kind"])
            key = (op["run"], op["forward"])
            row = rows.setdefault(key, {"measured": [0.0] * world, "bytes": [0] * world, "messages": [0] * world,
                                        "kinds": set(), **{name: [0.0] * world for name in links}})
            row["measured"][rank] += measured
            for name, link in links.items():
                row[name][rank] += link.exposed(transfer) if op["nbytes"] else 0.0
            row["bytes"][rank] += op["nbytes"]
            row["messages"][rank] += op["messages"]
            row["kinds"].add(op["kind"])
    table = []
    for (run, forward), row in rows.items():
        method, length = run.split(":")
        measured = statistics.mean(row["measured"]) / layers
        entry = {"method": method, "tokens": int(length), "forward": ("prefill", "query")[forward],
                 "collectives": sorted(row["kinds"]), "bytes_per_layer": statistics.mean(row["bytes"]) / layers,
                 "messages_per_layer": statistics.mean(row["messages"]) / layers,
                 "measured_ms_per_layer": 1e3 * measured}
        for name in links:
            modelled = statistics.mean(row[name]) / layers
            entry[f"{name}_ms_per_layer"] = 1e3 * modelled
            entry[f"{name}_over_measured"] = modelled / measured if measured >= VISIBLE_S else None
        table.append(entry)
    return table


def within(rows, name):
    """(rows within WITHIN of measured, rows with a ratio) of model `name` over prefill rows."""
    ratios = [row[f"{name}_over_measured"] for row in rows if row["forward"] == "prefill"
              and row[f"{name}_over_measured"] is not None]
    return sum(abs(ratio - 1) <= WITHIN for ratio in ratios), len(ratios)


def main(argv=None):
    args = parse_args(argv)
    reason = unavailable()
    if reason:
        raise SystemExit(f"benchmarks/comm_model.py needs network namespaces: {reason}")
    scratch = tempfile.mkdtemp(prefix="lc-comm-model-")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    results = {"what": "longctx.simulate's link model against a tc-tbf-shaped link between two network namespaces",
               "measured": "each collective timed directly on every rank (monotonic clock shared by the nodes): "
                           "from when every rank it receives from had posted it, or from the rank's wait if later, "
                           "to the wait's return; compute times do not enter, so CPU contention moves them little "
                           "(it still delays small messages and slows transfers that overlap compute)",
               "modelled": "longctx.simulate.Link(...).exposed(Transfer(received, messages, window, sent)) for the "
                           "same bytes, messages and overlap window: 'default' = Link(rate) as the README's "
                           "simulated hosts use it (full duplex, 20 us per message, no host limit); 'calibrated' = "
                           "Link(rate, latency_us, duplex=False, host_gb_per_s) with the latency and the host's "
                           "rate per kind of collective measured on the unshaped link first",
               "command": "python benchmarks/comm_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "load_average_at_start": os.getloadavg()},
               "model": {"family": "llama", "layers": args.layers, "hidden": args.hidden, "heads": args.heads,
                         "kv_heads": args.kv_heads, "dtype": "float32"},
               "nodes": 2, "workers_per_node": args.workers_per_node, "rows": []}
    try:
        model = make_tiny_model(os.path.join(scratch, "model"), "llama", args.hidden, args.layers, args.heads,
                                args.kv_heads, seed=0)
        with Bed(("a", "b"), env=env) as bed:
            torchrun_job(bed, args, model, scratch, None, ["--calibrate"])
            with open(os.path.join(scratch, "calibration.json")) as handle:
                calibration = json.load(handle)
            if args.latency_us is not None:
                calibration["latency_us"] = args.latency_us
            results["calibration"] = calibration
            for rate in (float(value) for value in args.rates.split(",")):
                out = os.path.join(scratch, f"rate-{rate:g}")
                os.makedirs(out)
                started = time.monotonic()
                records = torchrun_job(bed, args, model, out, rate,
                                       ["--methods", args.methods, "--lengths", args.lengths])
                if args.traces:
                    shutil.copytree(out, os.path.join(args.traces, f"rate-{rate:g}"), dirs_exist_ok=True)
                links = {"default": Link(rate / 8),  # Gbit/s -> GB/s
                         "calibrated": Link(rate / 8, calibration["latency_us"], duplex=False,
                                            host_gb_per_s=calibration["host_gb_per_s"])}
                for row in compare(records, links, args.layers):
                    results["rows"].append({"gbit_per_s": rate, **row})
                print(f"{rate:g} Gbit/s: {time.monotonic() - started:.0f} s", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name in ("default", "calibrated"):
        hits, total = within(results["rows"], name)
        results[f"{name}_prefill_rows_within_25_percent"] = f"{hits} of {total}"
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=1)
    print_table(results)


def print_table(results):
    """The rows as a text table, then how many prefill rows each model gets within 25 %."""
    rates = ", ".join(f"{kind} {rate:.2f}" for kind, rate in results["calibration"]["host_gb_per_s"].items())
    print(f"calibration: {results['calibration']['latency_us']:.0f} us per message; host GB/s: {rates}")
    print(f"{'Gbit/s':>6} {'method':>9} {'tokens':>6} {'forward':>7} {'MB/layer':>8} {'measured':>8} "
          f"{'default':>8} {'ratio':>5} {'calib.':>8} {'ratio':>5}   (ms per layer)")
    for row in results["rows"]:
        ratios = [row[f"{name}_over_measured"] for name in ("default", "calibrated")]
        shown = ["-" if ratio is None else f"{ratio:.2f}" for ratio in ratios]
        print(f"{row['gbit_per_s']:>6g} {row['method']:>9} {row['tokens']:>6} {row['forward']:>7} "
              f"{row['bytes_per_layer'] / 1e6:>8.2f} {row['measured_ms_per_layer']:>8.2f} "
              f"{row['default_ms_per_layer']:>8.2f} {shown[0]:>5} {row['calibrated_ms_per_layer']:>8.2f} {shown[1]:>5}")
    for name in ("default", "calibrated"):
        print(f"{name}: {results[f'{name}_prefill_rows_within_25_percent']} prefill rows within 25 %")


if __name__ == "__main__":
    main()
