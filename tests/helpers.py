"""Helpers shared by test modules (import them from here, never from another test module).

Paths are anchored at the repository root (`REPO`), never at the working directory.
"""

import copy
import os
import signal
import subprocess
import sys
import threading
import time

import torch

from longctx.comm import ProcessGroupComm, Ready
from longctx.config import RunConfig
from longctx.engine import Engine, Request
from longctx.models import load_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")


def default_sigint():
    """`preexec_fn` of a child process the test sends Ctrl-C: SIGINT back to its default, which
    Python turns into KeyboardInterrupt, even when this test run inherited SIGINT ignored (a run
    started in the background by a non-interactive shell does; its children would never see it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args, timeout=240, stdin=None, env=None):
    """`longctx *args` in a fresh interpreter (the repository and tests/ on its path; `env`
    replaces the inherited environment)."""
    env = dict(os.environ if env is None else env, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    return subprocess.run([sys.executable, "-m", "longctx.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, input=stdin)


def dense_result(model_dir, doc_ids, query_ids, max_new_tokens=6):
    """Single-process dense engine result with hidden states (the exactness reference)."""
    model = load_model(model_dir, torch.device("cpu"), torch.float32)
    engine = Engine(model, ProcessGroupComm(), RunConfig(model=model_dir, method="dense", nproc=1), torch.device("cpu"))
    return engine.run(Request(doc_ids, query_ids, max_new_tokens, "dense", True))


def relative_error(result, reference):
    """Relative error of document + question final hidden states."""
    value = torch.cat([result.doc_hidden, result.query_hidden])
    ref = torch.cat([reference.doc_hidden, reference.query_hidden])
    return float((value - ref).norm() / ref.norm())


class ThreadComm:
    """A `longctx.comm.Comm` for worker threads of one process: every collective meets at a shared
    barrier (all-gather, broadcast, the ring's point-to-point exchange, all-to-all), so the whole
    engine runs on simulated workers without process start-up."""

    def __init__(self, rank, hub):
        self.rank, self.world, self.timeout_s = rank, hub["world"], 60.0
        self.hub = hub

    def _share(self, value):
        barrier, slots = self.hub["barrier"], self.hub["slots"]
        barrier.wait()
        slots[self.rank] = value
        barrier.wait()
        values = list(slots)
        barrier.wait()
        return values

    def all_gather(self, tensor, sizes=None, dim=0):
        """Every rank's tensor (sizes need no padding in one process)."""
        return [part.clone() for part in self._share(tensor)]

    def all_gather_async(self, tensor):
        """`all_gather`, already complete."""
        return Ready(self.all_gather(tensor))

    def broadcast_object(self, obj, src=0):
        """Rank `src`'s object."""
        return self._share(obj)[src]

    def barrier(self):
        """Wait for every thread."""
        self.hub["barrier"].wait()

    def exchange(self, send, recv_shape, send_to, recv_from):
        """Every rank posts one send and one receive; all ranks call it at the same step."""
        parts = self._share((send_to, send))
        target, tensor = parts[recv_from]
        assert target == self.rank and tuple(tensor.shape) == tuple(recv_shape)
        return Ready(tensor.clone())

    def all_to_all(self, send, send_splits, recv_splits):
        """Piece r of every rank's send goes to rank r."""
        parts = self._share(list(send.split(send_splits)))
        return torch.cat([parts[source][self.rank] for source in range(self.world)]).clone()


def start_workers(engines, hub, request, on_token=None, on_done=None):
    """Run `request` on every engine of `engines` (rank r's, meeting at `hub`'s barrier) in a
    thread of its own; rank 0 passes each generated token to `on_token` and calls `on_done` when
    it ends. Returns `finish()`: it waits for every thread and returns rank 0's EngineResult,
    or raises the first failure (which aborts the barrier, so no thread is left waiting).
    Who calls it: `run_workers`, the plug-in launcher `plugins.threads`."""
    results, errors = [None] * len(engines), []

    def work(rank):
        try:
            results[rank] = engines[rank].run(request, on_token=on_token if rank == 0 else None)
        except BaseException as exc:  # surface the first failure, release the others
            errors.append(exc)
            hub["barrier"].abort()
        finally:
            if rank == 0 and on_done is not None:
                on_done()

    threads = [threading.Thread(target=work, args=(rank,)) for rank in range(len(engines))]
    for thread in threads:
        thread.start()

    def finish():
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results[0]

    return finish


def run_workers(model, config, request, world):
    """Run `request` on `world` worker threads; returns rank 0's engine result."""
    hub = {"world": world, "barrier": threading.Barrier(world, timeout=120), "slots": [None] * world}
    engines = [Engine(copy.deepcopy(model), ThreadComm(rank, hub), config.replace(nproc=world), torch.device("cpu"))
               for rank in range(world)]  # a model copy each: forward hooks must not be shared
    return start_workers(engines, hub, request)()


def marked_processes(marker):
    """PIDs of live processes whose environment holds LONGCTX_FAULT_RUN=marker (not this test's
    own process, nor the multiprocessing resource tracker it may have started)."""
    found = []
    needle = f"LONGCTX_FAULT_RUN={marker}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                marked = needle in handle.read().split(b"\0")
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                tracker = b"resource_tracker" in handle.read()
            with open(f"/proc/{entry}/stat") as stat:
                alive = stat.read().split()[2] != "Z"
        except OSError:
            continue
        if marked and alive and not tracker:
            found.append(int(entry))
    return found


def assert_none_left(marker, grace_s=15):
    """No process of the job is alive within `grace_s` (then kill them, and fail)."""
    deadline = time.monotonic() + grace_s
    while (left := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"
