"""Simulated multi-host prefill: each host's real work, timed alone; the network modelled.

A machine with one device (or a few CPU cores) cannot run P hosts side by side, but it can run
each host's share on its own: its tokens through every layer of the model, its attention
calls with the real kernel, its compressor. `simulate_hosts` does exactly that, one host at a
time with the whole machine, through the unmodified engine and method:

1. The engine runs on host r with a `SimulatedComm` (rank r of P). Every collective returns
   tensors of the shapes the real one would (zeros for what other hosts would send; a host's
   own contribution is its real tensor), and records the bytes this host receives, in which
   forward and layer, and, for transfers that are posted before compute and waited on later
   (the ring's next block, an asynchronous all-gather), the compute time between post and
   wait: the window the transfer can hide behind. The work a host does does not depend on
   the values it receives (dense kernels; APB keeps a fixed number of keys), so the timing is
   that of the real host.
2. Forward hooks time every decoder layer (the device synchronised at each boundary), minus
   the time spent inside the simulated collectives, which is not compute. A request with media
   (a video) first runs the family's encoder (its share of the frames, or all of them): that is
   a forward of its own, one "layer" whose transfer is the all-gather of the embeddings.

What is modelled (`critical_path`): a transfer of `messages` messages takes
`messages * latency + bytes / bandwidth` on a link of `Link.gb_per_s` per host, where the bytes
are what the host receives when the link is full duplex (it sends at the same time, at the
full rate: NCCL, RDMA), and what it sends plus what it receives when not (`Link.duplex`
False: gloo's TCP pairs, measured at about half the link rate each way on a symmetric
exchange), and never faster than the host itself moves data in that kind of collective
(`Link.host_gb_per_s`, sent plus received, one rate or one per `Transfer.kind`; None: no
limit; gloo's all-gather on a CPU moves data several times slower than its point-to-point
sends). A blocking collective adds its time to the host's layer, a posted
one only what its window does not cover (all of it when `Link.overlap` is False). The form was
checked against a real link shaped with `tc tbf` between two network namespaces
(`benchmarks/comm_model.py`, results in benchmarks/results/comm_model.json). Hosts meet at
every layer in which any host communicates (the layer ends when the slowest host's compute
and exposed communication end); in layers without communication each host runs on its own.
The critical path of a forward is its slowest host at the end; a request's is the sum of
its forwards (the encoder, the prefill, then the query pass).
"""

import math
import time
from dataclasses import dataclass, field

import torch

from longctx.engine import Engine, Request


@dataclass
class Transfer:
    """Bytes a host receives in one collective (`nbytes`) and sends (`sent`, None: as many);
    `window_s` None = blocking, else the compute time between posting and waiting (the part
    of the transfer that can overlap); `kind` the collective ("exchange", "all_gather",
    "all_to_all"; None: unknown)."""

    nbytes: int
    messages: int
    window_s: float = None
    sent: int = None
    kind: str = None


@dataclass
class LayerTrace:
    """One decoder layer of one forward on one host: compute seconds and transfers received."""

    compute_s: float = 0.0
    transfers: list = field(default_factory=list)


@dataclass
class ForwardTrace:
    """One forward (prefill or query pass) on one host: its layers and the compute outside them."""

    layers: list = field(default_factory=list)
    other_s: float = 0.0


@dataclass
class HostTrace:
    """Everything measured for one host: its owned document tokens and its forwards in order
    (the media encoder if any, prefill, query pass)."""

    rank: int
    tokens: int
    forwards: list = field(default_factory=list)

    def compute_s(self):
        """Total measured compute seconds of this host."""
        return sum(fwd.other_s + sum(layer.compute_s for layer in fwd.layers) for fwd in self.forwards)

    def received_bytes(self):
        """Total bytes this host receives."""
        return sum(t.nbytes for fwd in self.forwards for layer in fwd.layers for t in layer.transfers)


@dataclass(frozen=True)
class Link:
    """The modelled network: bandwidth per host in GB/s, latency per message in microseconds,
    whether posted transfers overlap compute, whether a host sends and receives at the full
    rate at once (`duplex`), and the rate in GB/s at which a host itself moves data, sent plus
    received (`host_gb_per_s`: one rate, or a dict of rates by `Transfer.kind`; None, or a
    kind the dict does not name: no limit)."""

    gb_per_s: float
    latency_us: float = 20.0
    overlap: bool = True
    duplex: bool = True
    host_gb_per_s: float = None

    def seconds(self, transfer):
        """Time of one transfer on this link."""
        received = transfer.nbytes
        sent = received if transfer.sent is None else transfer.sent
        wire = (max(sent, received) if self.duplex else sent + received) / (self.gb_per_s * 1e9)
        rate = self.host_gb_per_s
        if isinstance(rate, dict):
            rate = rate.get(transfer.kind)
        host = (sent + received) / (rate * 1e9) if rate else 0.0
        return transfer.messages * self.latency_us * 1e-6 + max(wire, host)

    def exposed(self, transfer):
        """The part of a transfer's time compute does not hide."""
        total = self.seconds(transfer)
        if transfer.window_s is None or not self.overlap:
            return total
        return max(0.0, total - transfer.window_s)


class _Recorder:
    """The clock and trace of the host being simulated; shared by its comm and layer hooks.
    `clock` is the time source (seconds): wall time, or `time.thread_time` for the CPU time of
    one thread on a machine others share."""

    def __init__(self, device, rank, clock=time.perf_counter):
        self.clock = clock
        self.device = device
        self.trace = HostTrace(rank, 0)
        self.comm_s = 0.0  # wall time spent inside simulated collectives (not compute)
        self.layer = None
        self._forward_start = self._layer_start = 0.0

    def now(self):
        """Compute clock: wall time minus time inside collectives, device synchronised."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.clock() - self.comm_s

    def receive(self, nbytes, messages, window_s=None, sent=None, kind=None):
        """Record a transfer into the current layer (or the forward's first layer if outside one)."""
        if not self.trace.forwards:
            self.trace.forwards.append(ForwardTrace())
        forward = self.trace.forwards[-1]
        index = self.layer if self.layer is not None else 0
        while len(forward.layers) <= index:
            forward.layers.append(LayerTrace())
        forward.layers[index].transfers.append(Transfer(int(nbytes), messages, window_s,
                                                        None if sent is None else int(sent), kind))

    def forward_begins(self, module, args, kwargs):
        self.trace.forwards.append(ForwardTrace())
        self._forward_start = self.now()

    def forward_ends(self, module, args, kwargs, output):
        forward = self.trace.forwards[-1]
        total = self.now() - self._forward_start
        forward.other_s = max(0.0, total - sum(layer.compute_s for layer in forward.layers))

    def layer_begins(self, index):
        def hook(module, args):
            self.layer = index
            self._layer_start = self.now()
        return hook

    def layer_ends(self, index):
        def hook(module, args, output):
            forward = self.trace.forwards[-1]
            while len(forward.layers) <= index:
                forward.layers.append(LayerTrace())
            forward.layers[index].compute_s += self.now() - self._layer_start
            self.layer = None
        return hook


class _Posted:
    """A simulated posted transfer: `wait()` records the overlap window and returns the result."""

    def __init__(self, recorder, kind, result, nbytes, sent, messages):
        self.recorder, self.kind, self.result = recorder, kind, result
        self.nbytes, self.sent, self.messages = nbytes, sent, messages
        self.posted_at = None  # set once the simulated collective's own time is accounted

    def wait(self):
        window = self.recorder.now() - self.posted_at
        if self.nbytes:
            self.recorder.receive(self.nbytes, self.messages, window, self.sent, self.kind)
            self.nbytes = 0
        return self.result


def exchange_traffic(send_numel, recv_shape, element_size, send_to, recv_from, rank):
    """(bytes received, bytes sent, messages) of rank `rank` in a ring exchange: a block of
    `send_numel` elements to `send_to`, one of `recv_shape` from `recv_from` (nothing to or from
    itself). Shared by SimulatedComm and the measured check of the model
    (benchmarks/comm_probe.py), so both count the same bytes."""
    received = 0 if recv_from == rank else math.prod(recv_shape) * element_size
    sent = 0 if send_to == rank else send_numel * element_size
    return received, sent, int(bool(received))


def gather_traffic(shape, element_size, sizes, dim, world):
    """(bytes received, bytes sent, messages) of one rank in an all-gather of `shape` tensors
    along `dim` (`sizes`: each rank's length there, None: all equal): the real collective pads
    every part to the longest, so that is what travels, from each of the `world - 1` others;
    in a ring a rank also forwards `world - 1` parts."""
    sizes = sizes or [shape[dim]] * world
    row = math.prod(size for axis, size in enumerate(shape) if axis != dim % len(shape))
    received = (world - 1) * row * max(sizes) * element_size
    return received, received, world - 1


def all_to_all_traffic(shape, element_size, send_splits, recv_splits, rank):
    """(bytes received, bytes sent, messages) of rank `rank` in an all-to-all along dim 0 of rows
    shaped like `shape[1:]` (`send_splits[r]` rows to rank r, `recv_splits[r]` from it)."""
    row = math.prod(shape[1:]) * element_size
    received = sum(size for source, size in enumerate(recv_splits) if source != rank) * row
    sent = sum(size for target, size in enumerate(send_splits) if target != rank) * row
    return received, sent, (len(recv_splits) - 1) if received else 0


class SimulatedComm:
    """Rank `rank` of a `world`-host job with no other host present (see the module docstring):
    a `longctx.comm.Comm`.

    Collectives return correctly shaped tensors (zeros from other hosts) immediately and record
    what the real collective would deliver to this host.
    """

    def __init__(self, rank, world, recorder):
        self.rank, self.world, self.timeout_s = rank, world, float("inf")
        self.recorder = recorder

    def _timed(self, make):
        start = self.recorder.clock()
        value = make()
        self.recorder.comm_s += self.recorder.clock() - start
        if isinstance(value, _Posted):
            value.posted_at = self.recorder.now()
        return value

    def exchange(self, send, recv_shape, send_to, recv_from):
        """Post the ring transfer: a block of `recv_shape` from `recv_from` (zeros)."""
        def make():
            recv = torch.zeros(recv_shape, dtype=send.dtype, device=send.device)
            return _Posted(self.recorder, "exchange", recv, *exchange_traffic(send.numel(), recv_shape, send.element_size(),
                                                                 send_to, recv_from, self.rank))
        return self._timed(make)

    def all_gather(self, tensor, sizes=None, dim=0):
        """Every rank's tensor: this rank's own, zeros of the right length for the others."""
        return self._timed(lambda: self._gather(tensor, sizes, dim, blocking=True))

    def all_gather_async(self, tensor):
        """Posted all-gather of equally shaped tensors; the window is recorded at `wait()`."""
        return self._timed(lambda: self._gather(tensor, None, 0, blocking=False))

    def _gather(self, tensor, sizes, dim, blocking):
        sizes = sizes or [tensor.shape[dim]] * self.world
        parts = []
        for rank, size in enumerate(sizes):
            shape = list(tensor.shape)
            shape[dim] = size
            parts.append(tensor if rank == self.rank else tensor.new_zeros(shape))
        nbytes, sent, messages = gather_traffic(tensor.shape, tensor.element_size(), sizes, dim, self.world)
        if not blocking:
            return _Posted(self.recorder, "all_gather", parts, nbytes, sent, messages)
        if nbytes:
            self.recorder.receive(nbytes, messages, sent=sent, kind="all_gather")
        return parts

    def all_to_all(self, send, send_splits, recv_splits):
        """Received rows: this rank's own split, zeros for the others."""
        def make():
            recv = send.new_zeros((sum(recv_splits),) + tuple(send.shape[1:]))
            nbytes, sent, messages = all_to_all_traffic(send.shape, send.element_size(), send_splits, recv_splits,
                                                        self.rank)
            if nbytes:
                self.recorder.receive(nbytes, messages, sent=sent, kind="all_to_all")
            return recv
        return self._timed(make)

    def broadcast_object(self, obj, src=0):
        """Every host computes the same plans and tokens here: its own object."""
        return obj

    def barrier(self):
        """Nothing to wait for."""


def decoder_layers(model):
    """The model's list of decoder layers (`model.base_model.layers`, or its language model's);
    ValueError if absent."""
    base = model.base_model
    layers = getattr(base, "layers", None)
    if layers is None:
        layers = getattr(getattr(base, "language_model", None), "layers", None)
    if layers is None:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (expected base_model.layers)")
    return layers


def simulate_hosts(model, config, doc_ids, query_ids, world, device, media=None, clock=time.perf_counter):
    """Run every host of a `world`-host job alone on this machine; returns [HostTrace] by rank.

    `model` is a longctx-loaded model (attention registered), `config` the RunConfig whose
    method is simulated. Each host runs the engine's prefill and query pass (one request, one
    new token); with `media` (the family's encoded input, a video's `VideoPatches`) it first
    encodes what the method gives it (its share of the frames, or all of them without the
    encoder split), a forward of its own. The caller sets the thread count (the whole machine,
    for a fair host). `clock` times the work (`_Recorder`): wall time by default.
    """
    traces = []
    for rank in range(world):
        recorder = _Recorder(device, rank, clock)
        engine = Engine(model, SimulatedComm(rank, world, recorder), config.replace(nproc=world), device)
        hooked = [module for module in (engine.family.encoder(model), engine.family.decoder(model)) if module is not None]
        handles = []
        for module in hooked:
            handles += [module.register_forward_pre_hook(recorder.forward_begins, with_kwargs=True),
                        module.register_forward_hook(recorder.forward_ends, with_kwargs=True)]
        for index, layer in enumerate(decoder_layers(model)):
            handles.append(layer.register_forward_pre_hook(recorder.layer_begins(index)))
            handles.append(layer.register_forward_hook(recorder.layer_ends(index)))
        try:
            request = Request(list(doc_ids), list(query_ids), 1, config.method, media=media)
            if media is not None:
                method = engine.method(config.method)
                shares = engine.family.split_media(media, world, method.encoder_split())
                request = Request(request.doc_ids, request.query_ids, 1, config.method, media=media,
                                  media_shares=shares).for_rank(rank)
            result = engine.run(request)
        finally:
            for handle in handles:
                handle.remove()
        recorder.trace.tokens = result.plan["hosts"][rank]["tokens"]
        traces.append(recorder.trace)
    return traces


def critical_path(traces, link):
    """Modelled time of the request on `link`: {"total_s", "forwards_s", "compute_s", "exposed_comm_s"}.

    Per forward: hosts start together; in a layer where any host receives data every host
    ends at the slowest host's compute + exposed communication, otherwise each host adds its
    own compute. `compute_s` / `exposed_comm_s` are per host (summed over forwards).
    """
    forwards_s = []
    compute = [0.0] * len(traces)
    exposed = [0.0] * len(traces)
    for index in range(max(len(trace.forwards) for trace in traces)):
        forwards = [trace.forwards[index] if index < len(trace.forwards) else ForwardTrace() for trace in traces]
        clocks = [fwd.other_s for fwd in forwards]
        for host, fwd in enumerate(forwards):
            compute[host] += fwd.other_s
        for layer in range(max(len(fwd.layers) for fwd in forwards)):
            steps = []
            for host, fwd in enumerate(forwards):
                trace = fwd.layers[layer] if layer < len(fwd.layers) else LayerTrace()
                comm = sum(link.exposed(transfer) for transfer in trace.transfers)
                compute[host] += trace.compute_s
                exposed[host] += comm
                steps.append((trace.compute_s, comm, bool(trace.transfers)))
            if any(communicates for _, _, communicates in steps):
                end = max(clock + work + comm for clock, (work, comm, _) in zip(clocks, steps))
                clocks = [end] * len(clocks)
            else:
                clocks = [clock + work for clock, (work, _, _) in zip(clocks, steps)]
        forwards_s.append(max(clocks))
    return {"total_s": sum(forwards_s), "forwards_s": forwards_s, "compute_s": compute, "exposed_comm_s": exposed}
