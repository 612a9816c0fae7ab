"""Run under torchrun on every rank (`benchmarks/comm_model.py` starts it on every node): each
method of --methods at each length of --lengths on the model at --model, prefill and query pass
(one new token), with every collective timed directly on every rank; rank r writes its trace to
OUT/rank{r}.json.

A collective's record: the run ("method:length"), forward (0 prefill, 1 query pass) and decoder
layer it belongs to, its kind, the bytes and messages this rank receives (counted by the same
functions as `longctx.simulate.SimulatedComm`), the ranks it receives from, and three times on
the machine's monotonic clock (shared by every process of the machine, so by every node of the
namespace test bed): posted (the call), wait (when the caller waited for it; = posted for
blocking collectives) and done (when the wait returned).
"""

import argparse
import json
import os
import time

import torch

from launch.spmd import SPMDLongContextLM
from longctx.comm import ProcessGroupComm
from longctx.compare import random_prompt
from longctx.engine import Request
from longctx.simulate import all_to_all_traffic, decoder_layers, exchange_traffic, gather_traffic


class Trace:
    """The records of one rank, and where the rank is (run, forward, layer)."""

    def __init__(self):
        self.records, self.run, self.forward, self.layer = [], None, -1, None

    def add(self, kind, traffic, peers, posted, wait=None, done=None):
        """Record one collective (`traffic`: bytes received, bytes sent, messages); returns the
        record (a posted one is completed by its wait)."""
        received, sent, messages = traffic
        record = {"run": self.run, "forward": self.forward, "layer": self.layer, "kind": kind,
                  "model_kind": "all_gather" if kind == "all_gather_async" else kind, "nbytes": int(received),
                  "sent": int(sent), "messages": messages, "peers": peers, "posted": posted, "wait": wait, "done": done}
        self.records.append(record)
        return record


class _TimedPending:
    """A posted collective: `wait()` records when it was waited for and when that returned."""

    def __init__(self, pending, record):
        self.pending, self.record = pending, record

    def wait(self):
        self.record["wait"] = time.perf_counter()
        result = self.pending.wait()
        self.record["done"] = time.perf_counter()
        return result


class TimedComm(ProcessGroupComm):
    """The worker's real ProcessGroupComm, every collective of the engine recorded in `trace`."""

    def __init__(self, base, trace):
        self.rank, self.world, self.group = base.rank, base.world, base.group
        self.timeout_s, self.bounded_waits, self.trace = base.timeout_s, base.bounded_waits, trace

    def exchange(self, send, recv_shape, send_to, recv_from):
        """Comm.exchange, posted now, completed at its wait."""
        posted = time.perf_counter()
        pending = super().exchange(send, recv_shape, send_to, recv_from)
        traffic = exchange_traffic(send.numel(), recv_shape, send.element_size(), send_to, recv_from, self.rank)
        return _TimedPending(pending, self.trace.add("exchange", traffic, [recv_from], posted))

    def all_gather(self, tensor, sizes=None, dim=0):
        """Comm.all_gather (blocking)."""
        posted = time.perf_counter()
        parts = super().all_gather(tensor, sizes, dim)
        traffic = gather_traffic(tensor.shape, tensor.element_size(), sizes, dim, self.world)
        self.trace.add("all_gather", traffic, list(range(self.world)), posted, posted, time.perf_counter())
        return parts

    def all_gather_async(self, tensor):
        """Comm.all_gather_async, posted now, completed at its wait."""
        posted = time.perf_counter()
        pending = super().all_gather_async(tensor)
        traffic = gather_traffic(tensor.shape, tensor.element_size(), None, 0, self.world)
        return _TimedPending(pending, self.trace.add("all_gather_async", traffic, list(range(self.world)), posted))

    def all_to_all(self, send, send_splits, recv_splits):
        """Comm.all_to_all (blocking)."""
        posted = time.perf_counter()
        received = super().all_to_all(send, send_splits, recv_splits)
        traffic = all_to_all_traffic(send.shape, send.element_size(), send_splits, recv_splits, self.rank)
        self.trace.add("all_to_all", traffic, list(range(self.world)), posted, posted, time.perf_counter())
        return received


def track_layers(model, trace):
    """Forward hooks keeping `trace.forward` / `trace.layer` current."""
    def forward_begins(module, args, kwargs):
        trace.forward += 1

    def layer(index):
        def begins(module, args):
            trace.layer = index

        def ends(module, args, output):
            trace.layer = None
        return begins, ends

    model.base_model.register_forward_pre_hook(forward_begins, with_kwargs=True)
    for index, block in enumerate(decoder_layers(model)):
        begins, ends = layer(index)
        block.register_forward_pre_hook(begins)
        block.register_forward_hook(ends)


def calibrate(comm, repeats=7):
    """{latency_us, host_gb_per_s: {kind: rate}} of this link: the median time of a 4-byte
    all-gather (one message each way), and per kind of collective the bytes a rank sends plus
    receives over the median time of one moving 16 MB each way."""
    def median_s(collective):
        times = []
        for _ in range(repeats):
            comm.barrier()
            started = time.perf_counter()
            collective()
            times.append(time.perf_counter() - started)
        return sorted(times)[repeats // 2]

    world, rank = comm.world, comm.rank
    part = torch.ones(4 << 20)  # 16 MB of float32
    rows = torch.ones(world * part.numel(), 1)
    after, before = (rank + 1) % world, (rank - 1) % world
    splits = [part.numel()] * world
    collectives = {
        "exchange": (lambda: comm.exchange(part, part.shape, after, before).wait(),
                     exchange_traffic(part.numel(), part.shape, 4, after, before, rank)),
        "all_gather": (lambda: comm.all_gather(part), gather_traffic(part.shape, 4, None, 0, world)),
        "all_to_all": (lambda: comm.all_to_all(rows, splits, splits),
                       all_to_all_traffic(rows.shape, 4, splits, splits, rank)),
    }
    rates = {kind: (traffic[0] + traffic[1]) / median_s(run) / 1e9 for kind, (run, traffic) in collectives.items()}
    return {"latency_us": 1e6 * median_s(lambda: comm.all_gather(torch.ones(1))), "host_gb_per_s": rates}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--methods", default="")
    parser.add_argument("--lengths", default="")
    parser.add_argument("--calibrate", action="store_true", help="only measure the link (calibrate())")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    lm = SPMDLongContextLM(args.model, method="burst", timeout_s=600, balance="equal")
    if args.calibrate:
        measured = calibrate(lm.engine.comm)
        if lm.rank == 0:
            with open(os.path.join(args.out, "calibration.json"), "w") as handle:
                json.dump(measured, handle)
        lm.close()
        return
    trace = Trace()
    lm.engine.comm = TimedComm(lm.engine.comm, trace)
    track_layers(lm.engine.model, trace)
    for length in (int(value) for value in args.lengths.split(",")):
        doc_ids, query_ids = random_prompt(len(lm.tokenizer), length, 16, seed=length)
        for method in args.methods.split(","):
            trace.run, trace.forward = f"{method}:{length}", -1
            lm.engine.run(Request(doc_ids, query_ids, 1, method))
    with open(os.path.join(args.out, f"rank{lm.rank}.json"), "w") as handle:
        json.dump(trace.records, handle)
    torch.distributed.barrier()
    lm.close()


if __name__ == "__main__":
    main()
