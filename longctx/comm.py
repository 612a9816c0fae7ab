"""What a worker's collectives are (`Comm`, a Protocol) and the process-group one that runs them.

Every method talks to the other workers only through a `Comm`: ring exchange, all-gather,
all-to-all, object broadcast, barrier. Three implementations satisfy it:
`ProcessGroupComm` (here: one torch.distributed process group, never a global, with the
worker's rank, the world size and the timeout), `longctx.simulate.SimulatedComm` (one host of
a job timed alone) and the tests' in-process `ThreadComm`. `tests/test_interfaces.py` checks
each. With `world == 1` and no group every `ProcessGroupComm` operation is a local no-op, so
single-process runs (the dense reference) need no torch.distributed at all. Works with gloo
(CPU tensors) and nccl (CUDA tensors).

How a wait is bounded depends on the backend (`bounded_waits`). On gloo a wait blocks the
CPU, so each one carries the timeout (`work.wait(timeout)`) and a failure is one
CollectiveError. On NCCL `work.wait()` only makes the current CUDA stream wait for the
collective and returns at once, so the CPU keeps queueing kernels ahead of the GPU (the
run-ahead the asynchronous all-gathers of Spava and the ring's double buffer rely on); a
timed wait would poll on the CPU instead. There the process group's timeout bounds every
collective: NCCL's watchdog aborts a collective that overruns it and, with
TORCH_NCCL_ASYNC_ERROR_HANDLING (which `launch.worker.init_worker` turns on unless the user set
it), tears the process down, which the launchers report as the worker's death.
"""

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist

from longctx.errors import CollectiveError


@runtime_checkable
class Transfer(Protocol):
    """A posted communication: `wait()` blocks until it completes and returns its result."""

    def wait(self) -> Any:
        ...


@runtime_checkable
class Comm(Protocol):
    """One worker's collectives: rank `rank` of `world`, every wait bounded by `timeout_s` (how:
    `ProcessGroupComm`). Ranks are the group's; every rank calls every collective in the same
    order with matching shapes."""

    rank: int
    world: int
    timeout_s: float

    def exchange(self, send: torch.Tensor, recv_shape: tuple, send_to: int, recv_from: int) -> Transfer:
        """Post a send of `send` to `send_to` and a receive of a `recv_shape` tensor from
        `recv_from` (same dtype/device); the Transfer's wait returns the received tensor."""
        ...

    def all_gather(self, tensor: torch.Tensor, sizes: list = None, dim: int = 0) -> list:
        """Every rank's `tensor` in rank order; `sizes[r]` is rank r's length along `dim` when
        lengths differ (None: all equal)."""
        ...

    def all_gather_async(self, tensor: torch.Tensor) -> Transfer:
        """Start an all-gather of equally shaped tensors; the Transfer's wait returns the list."""
        ...

    def all_to_all(self, send: torch.Tensor, send_splits: list, recv_splits: list) -> torch.Tensor:
        """all_to_all_single along dim 0 with per-rank split sizes; returns the received tensor."""
        ...

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s picklable object, on every rank."""
        ...

    def barrier(self) -> None:
        """Return when every rank has arrived."""
        ...


@dataclass
class Ready:
    """A Transfer that has already completed: `wait()` returns `result`."""

    result: Any

    def wait(self):
        """The result."""
        return self.result


@dataclass
class ProcessGroupComm:
    """The Comm of one torch.distributed process group: `group` (None: the default group, or
    none when world == 1), `rank`, `world`, `timeout_s`, and `bounded_waits` (True: every wait carries the timeout, for gloo; False: a
    wait orders the device stream and the process group's timeout bounds it, for NCCL; see the
    module docstring and `bounded_waits_for`)."""

    rank: int = 0
    world: int = 1
    group: object = None
    timeout_s: float = 300.0
    bounded_waits: bool = True

    def __post_init__(self):
        if self.world > 1 and self.group is None and not dist.is_initialized():
            raise RuntimeError(f"ProcessGroupComm for {self.world} workers needs an initialised process group")

    @property
    def timeout(self):
        """The timeout as a timedelta, as torch.distributed wants it."""
        return timedelta(seconds=self.timeout_s)

    def _wait(self, work):
        """Wait for `work`: at most the timeout when `bounded_waits` (CollectiveError, one line,
        when it fails), else by ordering the current device stream after it (NCCL)."""
        if not self.bounded_waits:
            work.wait()
            return
        try:
            work.wait(self.timeout)
        except RuntimeError as exc:
            detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            detail = re.sub(r"^\[[^\]]*\]\s*", "", detail).split(". ")[0]  # drop gloo's source location
            raise CollectiveError(f"a collective on rank {self.rank} failed within the {self.timeout_s:g} s timeout: "
                                  f"another worker died, hung or is unreachable ({detail[:160]})") from None

    def global_rank(self, group_rank):
        """Global rank of `group_rank` in this group (identity for the default group)."""
        if self.group is None:
            return group_rank
        return dist.get_global_rank(self.group, group_rank)

    def exchange(self, send, recv_shape, send_to, recv_from):
        """Post a send of `send` to `send_to` and a receive of a `recv_shape` tensor from `recv_from`.

        Ranks are group ranks. Returns a `Pending` whose `wait()` (bounded by the timeout)
        returns the received tensor (same dtype/device as `send`). Posting before computing on
        the current block is how callers double-buffer a ring.
        """
        recv = torch.empty(recv_shape, dtype=send.dtype, device=send.device)
        if send_to == self.rank and recv_from == self.rank:
            recv.copy_(send)
            return Pending(recv, [], self)
        ops = [
            dist.P2POp(dist.isend, send.contiguous(), self.global_rank(send_to), group=self.group),
            dist.P2POp(dist.irecv, recv, self.global_rank(recv_from), group=self.group),
        ]
        return Pending(recv, dist.batch_isend_irecv(ops), self)

    def all_gather(self, tensor, sizes=None, dim=0):
        """All-gather `tensor` from every rank; returns the list of tensors in rank order.

        `sizes[r]` is rank r's length along `dim` when lengths differ (tensors are padded to
        the longest for the collective and trimmed after); None means all equal.
        """
        if self.world == 1:
            return [tensor]
        tensor = tensor.contiguous()
        longest = max(sizes) if sizes is not None else tensor.shape[dim]
        if tensor.shape[dim] < longest:
            pad_shape = list(tensor.shape)
            pad_shape[dim] = longest - tensor.shape[dim]
            tensor = torch.cat([tensor, tensor.new_zeros(pad_shape)], dim=dim)
        gathered = [torch.empty_like(tensor) for _ in range(self.world)]
        self._wait(dist.all_gather(gathered, tensor, group=self.group, async_op=True))
        if sizes is not None:
            gathered = [part.narrow(dim, 0, size) for part, size in zip(gathered, sizes)]
        return gathered

    def all_gather_async(self, tensor):
        """Start an all-gather of equally shaped tensors; returns a `Pending` yielding the list."""
        if self.world == 1:
            return Pending([tensor], [], self)
        tensor = tensor.contiguous()
        gathered = [torch.empty_like(tensor) for _ in range(self.world)]
        work = dist.all_gather(gathered, tensor, group=self.group, async_op=True)
        return Pending(gathered, [work], self)

    def all_to_all(self, send, send_splits, recv_splits):
        """all_to_all_single along dim 0 with per-rank split sizes; returns the received tensor."""
        if self.world == 1:
            return send
        recv = send.new_empty((sum(recv_splits),) + tuple(send.shape[1:]))
        work = dist.all_to_all_single(
            recv, send.contiguous(), recv_splits, send_splits, group=self.group, async_op=True
        )
        self._wait(work)
        return recv

    def broadcast_object(self, obj, src=0):
        """Broadcast a picklable Python object from group rank `src`; every rank returns it."""
        if self.world == 1:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=self.global_rank(src), group=self.group)
        return holder[0]

    def barrier(self):
        """Block until every rank arrives (bounded by the timeout)."""
        if self.world > 1:
            self._wait(dist.barrier(group=self.group, async_op=True))


def bounded_waits_for(backend):
    """Whether a Comm over a process group of `backend` ("gloo", "nccl", ...) bounds each wait
    itself: every backend but NCCL, whose waits are stream-ordered and watched by its watchdog."""
    return str(backend).lower() != "nccl"


@dataclass
class Pending:
    """A posted communication: `wait()` blocks (with the Comm's timeout) and returns the result."""

    result: object
    works: list
    comm: ProcessGroupComm

    def wait(self):
        """Wait for every posted operation and return the received tensor(s)."""
        for work in self.works:
            self.comm._wait(work)
        self.works = []
        return self.result
