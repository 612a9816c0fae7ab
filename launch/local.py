"""Local launcher: N worker processes on this machine, driven over pipes by the Python API.

Each worker joins a gloo (CPU) or nccl (one GPU per worker) group, loads the model once and
serves requests until closed. A request arrives as token ids (the driver encoded and validated
it once), pickled once for all workers; with `stream` rank 0 also sends each generated token as
soon as it is decided. If any worker reports an error or dies, every worker is stopped and the
driver raises one clear error (a worker killed by a signal is reported with the signal's name);
collective timeouts bound every wait inside workers.

Workers are spawned without re-running the driver's `__main__` module (`_spawning`), so a
script that builds a pool at module level, with no `if __name__ == "__main__":` guard, works.
Workers ignore Ctrl-C: the driver receives it and stops them (`abort`).
"""

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
import types
from datetime import timedelta

import torch

from launch.replies import rank0, run_to_end
from launch.worker import build_engine, init_worker, shutdown_worker
from longctx.errors import CollectiveError, LongCtxError, WorkerError

POLL_S = 0.05
ROOT_CAUSE_S = 2.0  # how long a collective failure waits for the report of the worker that caused it
_SPAWN_LOCK = threading.Lock()


def max_local_workers(config):
    """Upper bound on local workers: 8 per GPU on CUDA, else 8 per CPU core (oversubscription
    beyond that only thrashes)."""
    if config.device != "cpu" and torch.cuda.is_available():
        return 8 * torch.cuda.device_count()
    return 8 * (os.cpu_count() or 1)


def _host_store(world, timeout_s):
    """The job's rendezvous store, held by the driver for the pool's life: a TCPStore on a
    loopback socket whose port the OS picks and that stays open (no bind-then-close race between
    two jobs). The socket is made here because TCPStore's own server listens on every interface.
    None for one worker (no process group)."""
    if world == 1:
        return None
    from torch.distributed import TCPStore

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    return TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                    timeout=timedelta(seconds=timeout_s), master_listen_fd=listener.detach())


def _join_store(port, timeout_s):
    """A worker's client of the driver's store on loopback `port` (None: no store)."""
    if port is None:
        return None
    from torch.distributed import TCPStore

    return TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=timeout_s))


def _use_loopback():
    """Make gloo and NCCL's bootstrap sockets use the loopback interface (every worker is on this
    machine), unless the user chose interfaces (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME)."""
    loopback = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), None)
    if loopback is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback)


def _exit_with_driver():
    """Start a daemon thread that ends this worker as soon as its driver process is gone, however
    it ended (a SIGKILLed driver cannot stop its workers, and a worker stuck in a computation
    or a hang would otherwise outlive it)."""
    driver = multiprocessing.parent_process()
    if driver is None:
        return

    def watch():
        multiprocessing.connection.wait([driver.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="longctx-driver-watch", daemon=True).start()


def _serve(rank, world, port, config, conn):
    """Worker process body: start up, then answer ("run", request, stream) messages until ("stop",).

    With `stream`, rank 0 sends ("layer", (done, total)) after each prefill layer and ("token",
    id) for each generated token before its ("ok", result), and a ("cancel",) from the driver
    cancels the request before its next token (`_streamer`); a cancel that arrives after its
    request ended is ignored.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle; then let it through
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # (blocked since the spawn: `_spawning`)
    _exit_with_driver()
    os.environ.update(config.worker_env)
    try:
        _use_loopback()
        comm, device = init_worker(config, rank, world, store=_join_store(port, config.timeout_s))
        engine = build_engine(config, comm, device)
        conn.send(("ready", None))
        while True:
            message = conn.recv()
            if message[0] == "stop":
                break
            if message[0] == "cancel":
                continue
            _, request, stream = message
            on_token = _streamer(conn) if stream and rank == 0 else None
            on_layer = (lambda done, total: conn.send(("layer", (done, total)))) if stream and rank == 0 else None
            result = engine.run(request, on_token=on_token, on_layer=on_layer)
            conn.send(("ok", result if rank == 0 else None))
        shutdown_worker()
    except LongCtxError as exc:
        _report(conn, ("user-error", str(exc)))
    except CollectiveError as exc:  # a consequence: some other worker failed first
        _report(conn, ("collective-error", describe_exception(exc)))
    except BaseException as exc:  # report anything, then exit: the driver stops the others
        _report(conn, ("error", describe_exception(exc)))


def _streamer(conn):
    """Rank 0's token callback for a streamed request: sends ("token", id) to the driver and
    returns True (cancel) once the driver has sent ("cancel",)."""
    def on_token(token):
        conn.send(("token", token))
        return conn.poll() and conn.recv()[0] == "cancel"

    return on_token


def _report(conn, message):
    """Send a worker's failure to the driver (unless the driver has already gone: closed pipe),
    then end the process at once: after a failed collective the process group's threads still
    run, and an ordinary interpreter exit can die in C++ ("terminate called without an active
    exception") on the user's terminal. The driver stops the other workers."""
    try:
        conn.send(message)
    except OSError:
        pass
    os._exit(1)


def describe_exception(exc):
    """One line: exception type, first line of its message, and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}{where}"


def describe_exit(proc):
    """How a worker process ended, e.g. 'exited with code 1' or 'was killed by signal SIGKILL'
    (waits briefly for the exit status, which can lag behind the closed pipe)."""
    proc.join(timeout=5)
    code = proc.exitcode
    if code is None:
        return "stopped answering (still running)"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


@contextlib.contextmanager
def _spawning():
    """While workers start: show `multiprocessing` an empty `__main__`, so spawned workers do not
    re-import the driver's script (they need nothing from it: the worker body, its config and
    the pipe come from importable modules; a script without an `if __name__ == "__main__":`
    guard would otherwise start a pool again inside every worker); and, in the main thread,
    hold Ctrl-C back without losing it: SIGINT is blocked (a mask the workers inherit, so a
    Ctrl-C while they import torch never reaches them; each unblocks it once it ignores it)
    and a SIGINT that reaches the driver meanwhile is remembered and raised as
    KeyboardInterrupt on the way out, after the stand-in `__main__` is gone. Pools started from
    several threads at once take turns (`_SPAWN_LOCK`), so none restores another's `__main__`."""
    with _SPAWN_LOCK:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        in_main_thread = threading.current_thread() is threading.main_thread()
        held = []
        if in_main_thread:
            previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            sys.modules["__main__"] = main
            if in_main_thread:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending SIGINT arrives now, into `held`
                signal.signal(signal.SIGINT, previous)
        if held:
            _deliver_sigint(previous)


def _deliver_sigint(handler):
    """Act on a SIGINT held back during the spawn as `handler` (the driver's SIGINT disposition)
    would have: call it (Python's default raises KeyboardInterrupt), or end the process for the
    default action; nothing when it was ignored."""
    if callable(handler):
        handler(signal.SIGINT, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signal.SIGINT)


def _messages(request, stream, world):
    """The pickled ("run", request, stream) message of each rank: one for all, unless the request
    gives each worker its own share of its media (`Request.for_rank`)."""
    def pickled(rank):
        return pickle.dumps(("run", request.for_rank(rank), stream), protocol=pickle.HIGHEST_PROTOCOL)

    if request.media_shares is None:
        return [pickled(0)] * world
    return [pickled(rank) for rank in range(world)]


class LocalLauncher:
    """`config.nproc` worker processes on this machine (a `longctx.launcher.Launcher`); `run(request)`
    returns rank 0's result."""

    name = "local"
    runs_here = True
    Options = None
    on_layer = None  # the driver's progress hook: on_layer(done, total) for each prefill layer of a stream

    @classmethod
    def worker_config(cls, config):
        """`config` itself: the workers run on this machine, where "auto" resolves as here."""
        return config

    def __init__(self, config):
        self.world = config.nproc
        limit = max_local_workers(config)
        if self.world > limit:
            raise LongCtxError(f"--nproc {self.world} is more local workers than this machine can run "
                               f"(at most {limit} here)")
        context = multiprocessing.get_context("spawn")
        self._store = _host_store(self.world, config.timeout_s)
        port = None if self._store is None else self._store.port
        self._conns, self._procs = [], []
        try:
            with _spawning():
                for rank in range(self.world):
                    parent, child = context.Pipe()
                    proc = context.Process(target=_serve, args=(rank, self.world, port, config, child), daemon=True)
                    proc.start()
                    child.close()
                    self._conns.append(parent)
                    self._procs.append(proc)
        except BaseException:  # Ctrl-C held back during the spawn, or a failed start: no worker stays
            self.abort()
            raise
        run_to_end(self._collect("ready"))

    def run(self, request):
        """Send `request` to every worker and return rank 0's EngineResult."""
        return run_to_end(self._send(request, stream=False))[0]

    def stream(self, request):
        """Send `request` to every worker; a generator yielding each generated token id (from
        rank 0) as soon as it is decided, whose return value is rank 0's EngineResult. A reader
        that stops early (closes it) cancels the request: the workers stop before the next
        token and `close` returns once they have; the pool stays usable."""
        return rank0(self._send(request, stream=True))

    def _send(self, request, stream):
        if not self._procs:
            raise LongCtxError("the workers have been shut down")
        messages = _messages(request, stream, self.world)
        for rank, conn in enumerate(self._conns):
            try:
                conn.send_bytes(messages[rank])
            except OSError:  # this worker is gone
                ended = describe_exit(self._procs[rank])
                self.abort()
                raise WorkerError(f"worker {rank} {ended}; all workers were stopped") from None
        return self._collect("ok", stream)

    def _collect(self, expected, stream=False):
        """Generator: wait for `expected` from every worker, yielding rank 0's streamed tokens;
        returns the replies by rank. Any failure, Ctrl-C included, stops every worker."""
        replies = [None] * self.world
        waiting = set(range(self.world))
        try:
            while waiting and self._procs:
                for rank in sorted(waiting):
                    conn, proc = self._conns[rank], self._procs[rank]
                    if conn.poll(POLL_S):
                        try:
                            kind, payload = conn.recv()
                        except EOFError:
                            kind, payload = "died", describe_exit(proc)
                        if kind == "layer":
                            if stream and self.on_layer is not None:
                                self.on_layer(*payload)
                            continue
                        if kind == "token":
                            if stream:
                                try:
                                    yield payload
                                except GeneratorExit:  # the reader stopped: cancel, collect the end
                                    stream = False
                                    self._conns[0].send(("cancel",))
                            continue
                        if kind != expected:
                            self._fail(*self._root_cause(rank, kind, payload, waiting))
                        replies[rank] = payload
                        waiting.discard(rank)
                    elif not proc.is_alive() and not conn.poll():
                        self._fail(rank, "died", describe_exit(proc))
        except BaseException:
            self.abort()
            raise
        return replies

    def _root_cause(self, rank, kind, payload, waiting):
        """(rank, kind, payload) to report for a request in which worker `rank` failed: when its
        failure is only a collective that broke ("collective-error"), the worker that broke it
        (one of `waiting` that reports another error or dies within ROOT_CAUSE_S) is named
        instead; failing that, a worker still running that sent no report at all ("silent": it
        hung, and its peers' collectives timed out waiting for it).
        """
        others = sorted(waiting - {rank})
        silent = set(others)
        deadline = time.monotonic() + ROOT_CAUSE_S
        while kind == "collective-error" and others and time.monotonic() < deadline:
            for other in others:
                conn, proc = self._conns[other], self._procs[other]
                if conn.poll(POLL_S):
                    try:
                        other_kind, other_payload = conn.recv()
                    except EOFError:
                        return other, "died", describe_exit(proc)
                    if other_kind in ("error", "user-error"):
                        return other, other_kind, other_payload
                    silent.discard(other)
                elif not proc.is_alive() and not conn.poll():
                    return other, "died", describe_exit(proc)
        if kind == "collective-error" and silent:
            return min(silent), "silent", f"worker {rank}: {payload}"
        return rank, kind, payload

    def _fail(self, rank, kind, payload):
        """Stop every worker and raise the error for worker `rank`'s failure (`kind`: "user-error"
        for the user's input, "died" for a process that ended, "silent" for one that stopped
        answering (`payload`: the collective that timed out waiting for it), else a failure
        report)."""
        self.abort()
        if kind == "user-error":
            raise LongCtxError(payload)
        if kind == "died":
            raise WorkerError(f"worker {rank} {payload}; all workers were stopped")
        if kind == "silent":
            raise WorkerError(f"worker {rank} stopped answering (hung?): no report from it while a collective "
                              f"timed out waiting ({payload}); all workers were stopped")
        raise WorkerError(f"worker {rank} failed: {payload}; all workers were stopped")

    def abort(self):
        """Kill every worker now (a request in flight is lost); later requests are refused."""
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
        for proc in self._procs:
            proc.join(timeout=10)
        self._procs, self._conns, self._store = [], [], None

    def close(self):
        """Ask every worker to stop, wait briefly, then kill any that remain."""
        for conn in self._conns:
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=10)
        self.abort()
