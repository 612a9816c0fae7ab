"""Local launcher: N worker processes on this machine, driven over pipes by the Python API.

Each worker joins a gloo (CPU) or nccl (one GPU per worker) group, loads the model once and
serves requests until closed. A request arrives as token ids (the driver encoded and validated
it once), pickled once for all workers. If any worker reports an error or dies, every worker is
stopped and the driver raises one clear error; collective timeouts bound every wait inside
workers.
"""

import multiprocessing
import os
import pickle
import socket
import traceback

import torch

from launch.worker import build_engine, init_worker, shutdown_worker
from longctx.errors import LongCtxError, WorkerError

POLL_S = 0.05


def max_local_workers(config):
    """Upper bound on local workers: 8 per GPU on CUDA, else 8 per CPU core (oversubscription
    beyond that only thrashes)."""
    if config.device != "cpu" and torch.cuda.is_available():
        return 8 * torch.cuda.device_count()
    return 8 * (os.cpu_count() or 1)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(rank, world, port, config, conn):
    """Worker process body: start up, then answer ("run", request) messages until ("stop",)."""
    try:
        comm, device = init_worker(config, rank, world, init_method=f"tcp://127.0.0.1:{port}")
        engine = build_engine(config, comm, device)
        conn.send(("ready", None))
        while True:
            message = conn.recv()
            if message[0] == "stop":
                break
            result = engine.run(message[1])
            conn.send(("ok", result if rank == 0 else None))
        shutdown_worker()
    except LongCtxError as exc:
        conn.send(("user-error", str(exc)))
    except BaseException as exc:  # report anything, then exit: the driver stops the others
        conn.send(("error", describe_exception(exc)))


def describe_exception(exc):
    """One line: exception type, first line of its message, and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}{where}"


class LocalLauncher:
    """Start `config.nproc` local workers; `run(request)` returns rank 0's result."""

    def __init__(self, config):
        self.world = config.nproc
        limit = max_local_workers(config)
        if self.world > limit:
            raise LongCtxError(f"--nproc {self.world} is more local workers than this machine can run "
                               f"(at most {limit} here)")
        context = multiprocessing.get_context("spawn")
        port = _free_port()
        self._conns, self._procs = [], []
        for rank in range(self.world):
            parent, child = context.Pipe()
            proc = context.Process(target=_serve, args=(rank, self.world, port, config, child), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._collect("ready")

    def run(self, request):
        """Send `request` to every worker and return rank 0's result dict."""
        if not self._procs:
            raise LongCtxError("the workers have been shut down")
        message = pickle.dumps(("run", request), protocol=pickle.HIGHEST_PROTOCOL)  # once, not per worker
        for conn in self._conns:
            conn.send_bytes(message)
        return self._collect("ok")[0]

    def _collect(self, expected):
        replies = [None] * self.world
        waiting = set(range(self.world))
        while waiting:
            for rank in sorted(waiting):
                conn, proc = self._conns[rank], self._procs[rank]
                if conn.poll(POLL_S):
                    try:
                        kind, payload = conn.recv()
                    except EOFError:
                        kind, payload = "error", f"exited with code {proc.exitcode}"
                    if kind != expected:
                        self._abort()
                        if kind == "user-error":
                            raise LongCtxError(payload)
                        raise WorkerError(f"worker {rank} failed: {payload}; all workers were stopped")
                    replies[rank] = payload
                    waiting.discard(rank)
                elif not proc.is_alive() and not conn.poll():
                    self._abort()
                    raise WorkerError(f"worker {rank} died (exit code {proc.exitcode}); all workers were stopped")
        return replies

    def _abort(self):
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
        for proc in self._procs:
            proc.join(timeout=10)
        self._procs, self._conns = [], []

    def close(self):
        """Ask every worker to stop, wait briefly, then kill any that remain."""
        for conn in self._conns:
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=10)
        self._abort()
