"""Ray launcher: one worker actor per GPU (one per `k` CPUs on CPU clusters) of a Ray cluster.

The driver (the process that made the `LongContextLM`) connects to Ray, checks that the cluster
has what `config.nproc` workers need (one clear error naming what is missing, before anything
starts), reserves one placement-group bundle per worker (`--placement`: pack or spread,
waiting at most `config.timeout_s`) and starts one `RankActor` per bundle:

    driver                      actors (any nodes)
    describe  ------------->    node id, node IP, GPU ids          (ranks: by node, then GPU)
    host_store ------------>    rank 0 listens on its node's IP, a port the OS picks, and keeps it
    start ------------------>   GPU visibility, join the process group through rank 0's store,
                                load the model once
    run(request) ----------->   every rank runs the engine; rank 0's result comes back

Actors stay warm across requests. The first actor that raises or dies ends the request at once
with one error on the driver: every actor is killed and the placement group removed, and later
requests are refused. Actors belong to the driver's Ray job, so they die with the driver.
Importing this module does not import Ray; the launcher imports it when it starts.
"""

import os
import queue
import socket
import threading
from dataclasses import dataclass
from datetime import timedelta

import torch

from launch.local import describe_exception
from launch.replies import rank0, run_to_end
from launch.worker import build_engine, init_worker, shutdown_worker
from longctx.errors import CollectiveError, LongCtxError, WorkerError
from longctx.options import option

STRATEGIES = {"pack": "PACK", "spread": "SPREAD"}
# Environment variables that choose network interfaces and transports for the process group;
# the driver's values are passed to every actor (their nodes' environments may differ).
DIST_ENV_PREFIXES = ("NCCL_", "GLOO_", "TORCH_NCCL_", "TP_SOCKET_IFNAME", "TORCH_DISTRIBUTED_DEBUG")
STOP_WAIT_S = 10.0
CONNECT_S = 10.0  # how long the driver tries to open a connection to an explicit --ray-address
# After the first failure, how long to wait for Ray to report an actor's death: a killed actor's
# peers often fail first (their connection to it drops), and the death is the error to report.
DEATH_REPORT_S = 3.0


def import_ray():
    """The `ray` module, or one clear LongCtxError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise LongCtxError("--launcher ray needs Ray, which is not installed: pip install 'longctx[ray]' "
                           "(or pip install 'ray[default]')") from None
    return ray


@dataclass(frozen=True)
class Slot:
    """Where one actor sits in the job: global `rank` of `world`, `local_rank` of the
    `local_world` workers on its node, and `visible_gpus` (the node's GPU ids this job holds,
    in local-rank order, for CUDA_VISIBLE_DEVICES; None on CPU workers)."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    visible_gpus: tuple = None


def _ip_key(ip):
    parts = ip.split(".")
    return tuple(int(part) for part in parts) if all(part.isdigit() for part in parts) else (ip,)


def _gpu_key(gpu):
    return (0, int(gpu), "") if str(gpu).isdigit() else (1, 0, str(gpu))


def assign_slots(infos):
    """Deterministic ranks for actors described by `infos` (one dict per actor, in actor order:
    `node_id`, `ip`, `gpus` = that actor's GPU ids as strings, empty on CPU). Ranks go by node
    (IP, then node id), then GPU id, then actor order; returns one Slot per actor, in actor
    order. Called by the driver with what every actor's `describe` returned."""
    def key(index):
        info = infos[index]
        first_gpu = min((_gpu_key(gpu) for gpu in info["gpus"]), default=(0, 0, ""))
        return (_ip_key(info["ip"]), info["node_id"], first_gpu, index)

    order = sorted(range(len(infos)), key=key)
    on_node = {}
    for index in order:
        on_node.setdefault(infos[index]["node_id"], []).append(index)
    slots = [None] * len(infos)
    for rank, index in enumerate(order):
        peers = on_node[infos[index]["node_id"]]
        gpus = tuple(str(gpu) for peer in peers for gpu in sorted(infos[peer]["gpus"], key=_gpu_key))
        slots[index] = Slot(rank, len(infos), peers.index(index), len(peers), gpus or None)
    return slots


def dist_environment(environ=None):
    """The process-group interface variables (NCCL_*, GLOO_*, TP_SOCKET_IFNAME, ...) set in
    `environ` (default: this process's environment), to pass to every actor."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items() if name.startswith(DIST_ENV_PREFIXES)}


def worker_bundle(use_gpus, cpus_per_worker):
    """One worker's placement-group bundle: `cpus_per_worker` CPUs, plus one GPU when `use_gpus`."""
    return {"CPU": float(cpus_per_worker), "GPU": 1.0} if use_gpus else {"CPU": float(cpus_per_worker)}


def missing_resources(bundle, world, nodes):
    """None when the live `nodes` (`ray.nodes()` entries) can hold `world` copies of `bundle`
    in total and one bundle fits on some node; else a sentence naming what is missing."""
    live = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
    for name, amount in bundle.items():
        need, have = amount * world, sum(resources.get(name, 0.0) for resources in live)
        if need > have:
            return (f"{world} workers need {need:g} {name} ({amount:g} per worker), and the Ray cluster has "
                    f"{have:g} {name} in all; add nodes (ray start --address ...) or ask for fewer workers")
    if not any(all(resources.get(name, 0.0) >= amount for name, amount in bundle.items()) for resources in live):
        wanted = ", ".join(f"{amount:g} {name}" for name, amount in bundle.items())
        return f"no node of the Ray cluster has {wanted} for one worker"
    return None


def check_reachable(address, timeout_s=CONNECT_S):
    """LongCtxError unless a TCP connection to `address` ("HOST:PORT" or "ray://HOST:PORT")
    opens within `timeout_s`; None, "auto" and "local" (found by Ray itself) are not checked."""
    if address in (None, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise LongCtxError(f"--ray-address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise LongCtxError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
                           f"(is it started? ray start --head)") from None


def _connect(ray, address):
    """Connect this process to the Ray cluster at `address` (see RayLauncher), once."""
    if ray.is_initialized():
        return
    check_reachable(address)  # ray.init retries an unreachable address for minutes
    try:
        ray.init(address=address, logging_level="warning")
    except ConnectionError as exc:
        raise LongCtxError(f"cannot connect to the Ray cluster at {address or 'RAY_ADDRESS'}: "
                           f"{str(exc).strip().splitlines()[0]}") from None


def _node_ip():
    import ray

    return ray.util.get_node_ip_address()


class RankActor:
    """One worker of a Ray job (made a Ray actor by `RayLauncher`). Nothing touches CUDA before
    `start`, which sets the GPU visibility first."""

    def __init__(self):
        self.store, self.engine, self.rank, self.device = None, None, None, None

    def describe(self):
        """{node_id, ip, gpus}: where this actor runs and the GPU ids Ray assigned it."""
        import ray

        context = ray.get_runtime_context()
        gpus = context.get_accelerator_ids().get("GPU", [])
        return {"node_id": context.get_node_id(), "ip": _node_ip(), "gpus": [str(gpu) for gpu in gpus]}

    def host_store(self, world, timeout_s):
        """Rank 0 only: start the rendezvous store on a port the OS picks on this node and keep
        it listening (no bind-then-close race); returns (node IP, port)."""
        from torch.distributed import TCPStore

        ip = _node_ip()
        self.store = TCPStore(ip, 0, world, is_master=True, timeout=timedelta(seconds=timeout_s),
                              wait_for_workers=False)
        return ip, self.store.port

    def start(self, config, slot, address):
        """Set GPU visibility, join the process group through the store at `address` (rank 0's
        (IP, port)) and load the model. Returns the slot's rank."""
        if slot.visible_gpus is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(slot.visible_gpus)
        if self.store is None:
            from torch.distributed import TCPStore

            self.store = TCPStore(address[0], address[1], slot.world, is_master=False,
                                  timeout=timedelta(seconds=config.timeout_s))
        comm, self.device = init_worker(config, slot.rank, slot.world, local_rank=slot.local_rank,
                                        local_world=slot.local_world, store=self.store)
        self.engine, self.rank = build_engine(config, comm, self.device), slot.rank
        return slot.rank

    def run(self, request):
        """Run `request` on this rank's engine; rank 0 returns the result dict, others None."""
        result = self.engine.run(request)
        return result if self.rank == 0 else None

    def stream(self, request):
        """Rank 0 only, a Ray streaming generator: run `request`, yielding ("token", id) for each
        generated token as soon as it is decided, then ("done", result dict). The engine runs in
        a thread (its token callback cannot yield); an error there is raised here."""
        tokens, outcome = queue.Queue(), {}

        def work():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # the current device is per thread
            try:
                outcome["result"] = self.engine.run(request, on_token=tokens.put)
            except BaseException as exc:  # re-raised in the actor's own thread below
                outcome["error"] = exc
            finally:
                tokens.put(None)

        thread = threading.Thread(target=work, name="longctx-engine")
        thread.start()
        for token in iter(tokens.get, None):
            yield "token", token
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        yield "done", outcome["result"]

    def stop(self):
        """Leave the process group."""
        shutdown_worker()


@dataclass(frozen=True)
class RayOptions:
    """The Ray launcher's options."""

    ray_address: str = option(None, "Ray cluster: 'auto' (the one running here), HOST:PORT or ray://HOST:PORT; "
                                    "default RAY_ADDRESS (set inside `ray job submit`), else the one running here, "
                                    "else a new local cluster", metavar="ADDR")
    placement: str = option("pack", "Ray placement of the workers: pack (fewest nodes) or spread",
                            choices=tuple(STRATEGIES))
    ray_cpus_per_worker: int = option(1, "CPUs reserved per Ray worker, its threads on CPU clusters", minimum=1,
                                      metavar="K")


class RayLauncher:
    """`config.nproc` RankActors on the Ray cluster at `--ray-address` (None: RAY_ADDRESS, else
    the cluster running on this machine, else a new local one; "auto": RAY_ADDRESS or the
    cluster running here; or HOST:PORT / ray://HOST:PORT): a `longctx.launcher.Launcher`.
    `run(request)` returns rank 0's result; `abort()` kills every actor and removes the
    placement group; `close()` stops them gracefully first. The driver's connection to Ray
    stays open for the life of the process."""

    name = "ray"
    runs_here = False
    Options = RayOptions

    @classmethod
    def worker_config(cls, config):
        """The config the actors run: the device resolved on the cluster ("cuda" for --device
        cuda, or auto on a cluster with GPUs; else "cpu") and, on CPU clusters, the CPUs
        reserved per worker as threads. Connects this process to the cluster."""
        ray, options = import_ray(), config.options_for(cls)
        _connect(ray, options.ray_address)
        gpus = ray.cluster_resources().get("GPU", 0.0)
        if config.device == "cuda" and not gpus:
            raise LongCtxError("--device cuda: the Ray cluster has no GPU")
        use_gpus = config.device == "cuda" or (config.device == "auto" and gpus > 0)
        return config.replace(device="cuda" if use_gpus else "cpu",
                              threads=config.threads or (None if use_gpus else options.ray_cpus_per_worker))

    def __init__(self, config):
        ray = self._ray = import_ray()
        from ray.util.placement_group import placement_group

        self.world = config.nproc
        self._actors, self._group = [], None
        options, worker_config = config.options_for(RayLauncher), self.worker_config(config)
        bundle = worker_bundle(worker_config.device == "cuda", options.ray_cpus_per_worker)
        problem = missing_resources(bundle, self.world, ray.nodes())
        if problem:
            raise LongCtxError(f"--launcher ray: {problem}")
        self._group = placement_group([bundle] * self.world, strategy=STRATEGIES[options.placement])
        try:
            self._reserve(bundle, config.timeout_s)
            self._actors = self._start_actors(bundle)
            slots = self._gather([actor.describe.remote() for actor in self._actors])
            slots = assign_slots(slots)
            self._actors = [actor for _, actor in sorted(zip((slot.rank for slot in slots), self._actors))]
            slots = sorted(slots, key=lambda slot: slot.rank)
            address = self._gather([self._actors[0].host_store.remote(self.world, config.timeout_s)])[0]
            self._gather([actor.start.remote(worker_config, slot, address)
                          for actor, slot in zip(self._actors, slots)])
        except BaseException:
            self.abort()
            raise

    def _reserve(self, bundle, timeout_s):
        if not self._group.wait(timeout_seconds=timeout_s):
            free = self._ray.available_resources()
            have = ", ".join(f"{free.get(name, 0.0):g} {name}" for name in bundle)
            raise LongCtxError(f"--launcher ray: could not reserve {self.world} workers' resources within "
                               f"{timeout_s:g} s (the cluster has {have} free; other jobs hold the rest)")

    def _start_actors(self, bundle):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        env = dist_environment()
        actor_class = self._ray.remote(RankActor)
        return [actor_class.options(
            num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0), max_restarts=0,
            runtime_env={"env_vars": env} if env else None,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self._group, placement_group_bundle_index=index),
        ).remote() for index in range(self.world)]

    def run(self, request):
        """Send `request` to every actor (serialised once) and return rank 0's result dict."""
        shared = self._share(request)
        return self._gather([actor.run.remote(shared) for actor in self._actors])[0]

    def stream(self, request):
        """Send `request` to every actor; a generator yielding each generated token id (from
        rank 0) as soon as it is decided, whose return value is rank 0's result dict. A reader
        that stops early leaves the request to finish without it; the actors stay usable."""
        shared = self._share(request)
        tokens = self._actors[0].stream.remote(shared)
        return rank0(self._collect([None] + [actor.run.remote(shared) for actor in self._actors[1:]], tokens))

    def _share(self, request):
        if not self._actors:
            raise LongCtxError("the Ray workers have been shut down (closed, or stopped after a failure); "
                               "start a new LongContextLM")
        return self._ray.put(request)

    def _gather(self, refs):
        """The results of `refs` (one per actor, in rank order); see `_collect`."""
        return run_to_end(self._collect(refs))

    def _collect(self, refs, tokens=None):
        """Generator: wait for `refs` (one per actor, in rank order), yielding the token ids that
        `tokens` streams (rank 0's `RankActor.stream`, standing for refs[0]); returns the results
        by rank. The first failure, Ctrl-C included, kills every actor and raises one error
        naming the worker."""
        ray = self._ray
        results = [None] * len(refs)
        waiting = {ref: rank for rank, ref in enumerate(refs) if ref is not None}
        reading, rank = True, 0
        try:
            while waiting or tokens is not None:
                (ready,), _ = ray.wait([*waiting, *([tokens] if tokens is not None else [])], num_returns=1)
                if ready is tokens:
                    rank = 0
                    kind, value = ray.get(next(tokens))
                    if kind == "done":
                        results[0], tokens = value, None
                    elif reading:
                        try:
                            yield value
                        except GeneratorExit:  # the reader stopped: finish without it
                            reading = False
                else:
                    rank = waiting.pop(ready)
                    results[rank] = ray.get(ready)
            return results
        except ray.exceptions.RayError as exc:
            rank, exc = self._root_cause(waiting, rank, exc)
            self.abort()
            raise self._worker_error(rank, exc) from None
        except BaseException:
            self.abort()
            raise

    def _root_cause(self, waiting, rank, exc):
        """(rank, error) to report for a request whose worker `rank` failed with `exc`: a death
        among the `waiting` refs (ref -> rank) reported within DEATH_REPORT_S; else, when `exc` is
        only a collective that broke, another worker's own failure; else `exc`."""
        ray = self._ray
        pending = list(waiting)
        done, _ = ray.wait(pending, num_returns=len(pending), timeout=DEATH_REPORT_S) if pending else ([], [])
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as death:
                return waiting[ref], death
            except ray.exceptions.RayError as failure:
                if _broken_collective(exc) and not _broken_collective(failure):
                    rank, exc = waiting[ref], failure
        return rank, exc

    def _worker_error(self, rank, exc):
        ray = self._ray
        cause = getattr(exc, "cause", None)
        if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, LongCtxError):
            return LongCtxError(str(cause))
        if isinstance(exc, ray.exceptions.RayTaskError) and cause is not None:
            return WorkerError(f"worker {rank} failed: {describe_exception(cause)}; all workers were stopped")
        if isinstance(exc, ray.exceptions.RayActorError):
            return WorkerError(f"worker {rank} died ({type(exc).__name__}: its actor process is gone); "
                               "all workers were stopped")
        return WorkerError(f"worker {rank} failed: {type(exc).__name__}; all workers were stopped")

    def abort(self):
        """Kill every actor now (a request in flight is lost) and remove the placement group;
        later requests are refused."""
        for actor in self._actors:
            self._ray.kill(actor, no_restart=True)
        self._actors = []
        if self._group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._group)
            self._group = None

    def close(self):
        """Ask every actor to leave the process group (waiting at most STOP_WAIT_S), then kill
        them and remove the placement group."""
        if self._actors:
            self._ray.wait([actor.stop.remote() for actor in self._actors], num_returns=len(self._actors),
                           timeout=STOP_WAIT_S)
        self.abort()


def _broken_collective(exc):
    """Whether a Ray error is a worker's CollectiveError: a consequence of another's failure."""
    return isinstance(getattr(exc, "cause", None), CollectiveError)
