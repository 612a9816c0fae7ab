"""Ray launcher: one worker actor per GPU (one per `k` CPUs on CPU clusters) of a Ray cluster.

The driver (the process that made the `LongContextLM`) joins the cluster within `config.timeout_s`
(`launch.ray_connect`: token authentication, stale saved addresses, Ctrl-C), reserves one
placement-group bundle per worker (`--placement`: pack or spread; inside a placement group
of its own caller, Ray Serve's or Tune's, it takes bundles of that group instead) and starts
one `RankActor` per bundle:

    driver                      actors (any nodes)
    describe  ------------->    host name, node id, node IP, GPU ids (ranks: by node, then GPU)
    host_store ------------>    rank 0 listens on its node's IP, a port the OS picks, and keeps it
    start ------------------>   GPU visibility, check the model directory on this node, join the
                                process group through rank 0's store, load the model once
    run(request) ----------->   every rank runs the engine; rank 0's result comes back

Nothing is checked against what the cluster shows before the placement group is submitted (an
autoscaler adds nodes for it): the driver waits for it at most the timeout, saying on stderr
what it waits for. `--device auto` means GPU workers when this driver sees a GPU, whatever the
cluster holds at the moment. The actors' environment is theirs: only `config.worker_env` and
the job's own runtime_env reach them (the driver's NCCL_* / GLOO_* settings are for the
driver's machine). Actors stay warm across requests. The first actor that raises or dies ends
the request at once with one error naming its rank, host and IP: every actor is killed and the
placement group removed, and later requests are refused. Actors belong to the driver's Ray job,
so they die with the driver. Over Ray Client (ray://) streaming generators are unavailable:
`stream` then yields the tokens when the request has ended. Importing this module does not
import Ray; the launcher imports it when it starts.
"""

import os
import queue
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import torch

from launch.local import describe_exception
from launch.ray_connect import connect
from launch.replies import rank0, run_to_end
from launch.worker import build_engine, init_worker, shutdown_worker
from longctx.errors import CollectiveError, LongCtxError, WorkerError
from longctx.options import option

STRATEGIES = {"pack": "PACK", "spread": "SPREAD"}
STOP_WAIT_S = 10.0
PROGRESS_S = 15.0  # how often the driver says what it still waits for
FIRST_PROGRESS_S = 2.0  # a placement group not ready this soon is reported as waiting
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


def worker_bundle(use_gpus, cpus_per_worker):
    """One worker's placement-group bundle: `cpus_per_worker` CPUs, plus one GPU when `use_gpus`."""
    return {"CPU": float(cpus_per_worker), "GPU": 1.0} if use_gpus else {"CPU": float(cpus_per_worker)}


def wants_gpus(device, driver_has_cuda):
    """Whether the workers are GPU workers: `--device cuda` yes, `cpu` no, `auto` when this driver
    sees a CUDA device (never from what the cluster holds now: an autoscaler may add GPU nodes
    later, and a scaled-down cluster must not turn a GPU job into a CPU one)."""
    return device == "cuda" or (device == "auto" and driver_has_cuda)


def cluster_summary(bundle, nodes, available):
    """'the cluster has 4 CPU (2 free) on 2 nodes' for the resources in `bundle`, from
    `ray.nodes()` entries and `ray.available_resources()`."""
    live = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
    held = ", ".join(f"{sum(res.get(name, 0.0) for res in live):g} {name} ({available.get(name, 0.0):g} free)"
                     for name in bundle)
    return f"the cluster has {held} on {len(live)} node{'s' if len(live) != 1 else ''}"


def reusable_bundles(specs, bundle, world):
    """Indices of `world` bundles of the caller's placement group (`specs`: its bundle specs)
    that can each hold a worker's `bundle`: the last ones that fit (bundle 0 conventionally
    holds the caller itself, as in Ray Tune and Serve). LongCtxError when too few fit."""
    fitting = [index for index, spec in enumerate(specs)
               if all(spec.get(name, 0.0) >= amount for name, amount in bundle.items())]
    if len(fitting) < world:
        wanted = ", ".join(f"{amount:g} {name}" for name, amount in bundle.items())
        raise LongCtxError(f"--launcher ray runs inside a placement group with {len(fitting)} bundles that hold "
                           f"a worker ({wanted}); {world} workers need {world} such bundles: reserve them in that "
                           "placement group")
    return fitting[-world:]


def model_path_for_workers(path, in_working_dir):
    """The model directory as every actor opens it: a relative path inside the driver's working
    directory stays relative when `in_working_dir` (a `ray job submit --working-dir` job: Ray
    ships that directory to every node and starts each actor in its copy); any other path is
    made absolute here (each actor then checks that it exists on its node)."""
    if os.path.isabs(path):
        return path
    inside = not os.path.relpath(os.path.abspath(path), os.getcwd()).startswith(os.pardir)
    return path if in_working_dir and inside else os.path.abspath(path)


def describe_ranks(ranks):
    """'ranks 0-1' / 'rank 3' / 'ranks 0, 2'."""
    ranks = sorted(ranks)
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    if ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"ranks {ranks[0]}-{ranks[-1]}"
    return "ranks " + ", ".join(map(str, ranks))


def _stderr(message):
    print(f"longctx: {message}", file=sys.stderr, flush=True)


def _node_ip():
    """This actor's node's address as its raylet announced it (`ray start --node-ip-address`, or
    what Ray detected there); `ray.util.get_node_ip_address()` would guess anew in a worker."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    return next(node["NodeManagerAddress"] for node in ray.nodes() if node["NodeID"] == node_id)


class RankActor:
    """One worker of a Ray job (made a Ray actor by `RayLauncher`). Nothing touches CUDA before
    `start`, which sets the GPU visibility first."""

    def __init__(self):
        self.store, self.engine, self.rank, self.device = None, None, None, None

    def describe(self):
        """{host, node_id, ip, gpus}: where this actor runs and the GPU ids Ray assigned it."""
        import ray

        context = ray.get_runtime_context()
        gpus = context.get_accelerator_ids().get("GPU", [])
        return {"host": socket.gethostname(), "node_id": context.get_node_id(), "ip": _node_ip(),
                "gpus": [str(gpu) for gpu in gpus]}

    def host_store(self, world, timeout_s):
        """Rank 0 only: start the rendezvous store on a port the OS picks on this node and keep
        it listening (no bind-then-close race); returns (node IP, port)."""
        from torch.distributed import TCPStore

        ip = _node_ip()
        self.store = TCPStore(ip, 0, world, is_master=True, timeout=timedelta(seconds=timeout_s),
                              wait_for_workers=False)
        return ip, self.store.port

    def start(self, config, slot, address):
        """Set GPU visibility, check that the model directory exists on this node, join the
        process group through the store at `address` (rank 0's (IP, port)) and load the model.
        Returns the slot's rank."""
        if slot.visible_gpus is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(slot.visible_gpus)
        if not os.path.isdir(config.model):
            raise LongCtxError(f"the model directory {config.model!r} does not exist on {socket.gethostname()} "
                               f"({_node_ip()}, worker {slot.rank}): put it at the same path on every node (a "
                               "shared file system), or submit with `ray job submit --working-dir` and a path "
                               "inside it")
        if self.store is None:
            from torch.distributed import TCPStore

            self.store = TCPStore(address[0], address[1], slot.world, is_master=False,
                                  timeout=timedelta(seconds=config.timeout_s))
        comm, self.device = init_worker(config, slot.rank, slot.world, local_rank=slot.local_rank,
                                        local_world=slot.local_world, store=self.store)
        self.engine, self.rank = build_engine(config, comm, self.device), slot.rank
        return slot.rank

    def run(self, request):
        """Run `request` on this rank's engine; rank 0 returns the EngineResult, others None."""
        result = self.engine.run(request)
        return result if self.rank == 0 else None

    def stream(self, request):
        """Rank 0 only, a Ray streaming generator: run `request`, yielding ("token", id) for each
        generated token as soon as it is decided, then ("done", EngineResult). The engine runs in
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

    ray_address: str = option(None, "Ray cluster: 'auto' (the one started here), HOST:PORT, [IPV6]:PORT or "
                                    "ray://HOST:PORT; default RAY_ADDRESS (set inside `ray job submit`), else the one "
                                    "started here, else a new local cluster", metavar="ADDR")
    placement: str = option("pack", "Ray placement of the workers: pack (fewest nodes) or spread",
                            choices=tuple(STRATEGIES))
    ray_cpus_per_worker: int = option(1, "CPUs reserved per Ray worker, its threads on CPU clusters", minimum=1,
                                      metavar="K")


class RayLauncher:
    """`config.nproc` RankActors on the Ray cluster at `--ray-address` (None: RAY_ADDRESS, else
    the cluster started on this machine, else a new local one; "auto": RAY_ADDRESS or the
    cluster started here; or HOST:PORT / [IPV6]:PORT / ray://HOST:PORT): a
    `longctx.launcher.Launcher`. `run(request)` returns rank 0's result; `abort()` kills every
    actor and removes the placement group it made; `close()` stops them gracefully first.
    `progress(message)` receives what the driver waits for (default: one line on stderr). The
    driver's connection to Ray stays open for the life of the process."""

    name = "ray"
    runs_here = False
    Options = RayOptions

    @classmethod
    def worker_config(cls, config):
        """The config the actors run: GPU workers for --device cuda, or for auto when this driver
        sees a GPU (`wants_gpus`), else CPU workers whose threads are the CPUs reserved for each."""
        use_gpus = wants_gpus(config.device, torch.cuda.is_available())
        cpus = config.options_for(cls).ray_cpus_per_worker
        return config.replace(device="cuda" if use_gpus else "cpu",
                              threads=config.threads or (None if use_gpus else cpus))

    def __init__(self, config, progress=_stderr):
        ray = self._ray = import_ray()
        self.world, self._progress = config.nproc, progress
        self._actors, self._group, self._own_group, self.where = [], None, False, []
        options = config.options_for(RayLauncher)
        connect(ray, options.ray_address, config.timeout_s)
        self._client = ray.util.client.ray.is_connected()  # Ray Client: no streaming generators
        use_gpus = wants_gpus(config.device, torch.cuda.is_available())
        if config.device == "auto" and not use_gpus and ray.cluster_resources().get("GPU"):
            self._progress("--device auto: CPU workers, as this driver has no GPU; the cluster has GPUs: "
                           "--device cuda puts one worker on each")
        bundle = worker_bundle(use_gpus, options.ray_cpus_per_worker)
        try:
            bundles = self._reserve(bundle, config, options.placement)
            self._actors = self._start_actors(bundle, bundles, dict(config.worker_env))
            infos = self._gather([actor.describe.remote() for actor in self._actors])
            slots = assign_slots(infos)
            order = sorted(range(self.world), key=lambda index: slots[index].rank)
            self._actors = [self._actors[index] for index in order]
            slots, infos = [slots[index] for index in order], [infos[index] for index in order]
            self.where = [f"{info['host']} ({info['ip']})" for info in infos]
            address = self._gather([self._actors[0].host_store.remote(self.world, config.timeout_s)])[0]
            in_job = bool(ray.get_runtime_context().runtime_env.get("working_dir"))
            worker_config = self.worker_config(config).replace(model=model_path_for_workers(config.model, in_job))
            self._gather([actor.start.remote(worker_config, slot, address)
                          for actor, slot in zip(self._actors, slots)])
        except BaseException:
            self.abort()
            raise
        nodes = {}
        for rank, place in enumerate(self.where):
            nodes.setdefault(place, []).append(rank)
        self._progress(f"{self.world} Ray workers on {len(nodes)} node{'s' if len(nodes) != 1 else ''}: "
                       + "; ".join(f"{place}: {describe_ranks(ranks)}" for place, ranks in nodes.items()))

    def _reserve(self, bundle, config, placement):
        """The bundle indices the actors go to: of the caller's placement group when there is
        one, else of a new one (`placement`), waited for at most `config.timeout_s`."""
        from ray.util import get_current_placement_group
        from ray.util.placement_group import placement_group

        current = get_current_placement_group()
        if current is not None:
            self._group = current
            return reusable_bundles(current.bundle_specs, bundle, self.world)
        self._group = placement_group([bundle] * self.world, strategy=STRATEGIES[placement])
        self._own_group = True
        self._wait_for_group(bundle, config.timeout_s)
        return list(range(self.world))

    def _wait_for_group(self, bundle, timeout_s):
        ray = self._ray
        wanted = ", ".join(f"{amount * self.world:g} {name}" for name, amount in bundle.items())
        started = time.monotonic()
        step = min(FIRST_PROGRESS_S, timeout_s)
        while not self._group.wait(timeout_seconds=step):
            waited = time.monotonic() - started
            have = cluster_summary(bundle, ray.nodes(), ray.available_resources())
            if waited >= timeout_s:
                raise LongCtxError(f"--launcher ray: could not reserve {self.world} workers ({wanted}) within "
                                   f"{timeout_s:g} s (--timeout); {have}: add nodes, wait for other jobs, or ask "
                                   "for fewer workers")
            self._progress(f"waiting for the Ray cluster to hold {self.world} workers ({wanted}); {have}; "
                           f"giving up in {timeout_s - waited:.0f} s (--timeout)")
            step = min(PROGRESS_S, timeout_s - waited)

    def _start_actors(self, bundle, bundles, env):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        actor_class = self._ray.remote(RankActor)
        return [actor_class.options(
            num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0), max_restarts=0,
            runtime_env={"env_vars": env} if env else None,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self._group, placement_group_bundle_index=index),
        ).remote() for index in bundles]

    def run(self, request):
        """Send `request` to every actor (serialised once, or each worker's share of its media) and
        return rank 0's EngineResult."""
        shared = self._share(request)
        return self._gather([actor.run.remote(part) for actor, part in zip(self._actors, shared)])[0]

    def stream(self, request):
        """Send `request` to every actor; a generator yielding each generated token id (from
        rank 0) as soon as it is decided, whose return value is rank 0's EngineResult (over Ray
        Client, every token once the request has ended). A reader that stops early leaves the
        request to finish without it; the actors stay usable."""
        if self._client:
            return self._stream_when_done(request)
        shared = self._share(request)
        tokens = self._actors[0].stream.remote(shared[0])
        return rank0(self._collect([None] + [actor.run.remote(part) for actor, part in
                                             zip(self._actors[1:], shared[1:])], tokens))

    def _stream_when_done(self, request):
        result = self.run(request)
        yield from result.tokens
        return result

    def _share(self, request):
        """One object reference per rank: the request put once, or each rank's own when it
        carries media split over the workers (`Request.for_rank`)."""
        if not self._actors:
            raise LongCtxError("the Ray workers have been shut down (closed, or stopped after a failure); "
                               "start a new LongContextLM")
        if request.media_shares is None:
            return [self._ray.put(request)] * self.world
        return [self._ray.put(request.for_rank(rank)) for rank in range(self.world)]

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
            error = self._worker_error(rank, exc)
            self.abort()
            raise error from None
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

    def _place(self, rank):
        return f"worker {rank}" + (f" on {self.where[rank]}" if rank < len(self.where) else "")

    def _worker_error(self, rank, exc):
        """The one error the driver raises for worker `rank`'s failure `exc` (a Ray error)."""
        ray = self._ray
        cause = getattr(exc, "cause", None)
        if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, LongCtxError):
            return LongCtxError(str(cause))
        if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, CollectiveError):
            lost = self._peer_named_in(str(cause))
            if lost:
                return WorkerError(f"the workers on {lost} stopped answering ({self._place(rank)}: "
                                   f"{describe_exception(cause)}); all workers were stopped")
        if isinstance(exc, ray.exceptions.RayTaskError) and cause is not None:
            return WorkerError(f"{self._place(rank)} failed: {describe_exception(cause)}; all workers were stopped")
        if isinstance(exc, ray.exceptions.RayActorError):
            reason = "its node left the cluster" if "node" in str(exc).lower() and "died" in str(exc).lower() \
                else "its actor process is gone"
            return WorkerError(f"{self._place(rank)} died ({type(exc).__name__}: {reason}); all workers were stopped")
        return WorkerError(f"{self._place(rank)} failed: {type(exc).__name__}; all workers were stopped")

    def _peer_named_in(self, message):
        """'HOST (IP), ranks ...' of the job's node whose IP a collective's error names (gloo:
        "Connection closed by peer [IP]:port"), or None."""
        for ip in re.findall(r"\[([0-9a-fA-F.:]+)\]", message):
            ranks = [rank for rank, place in enumerate(self.where) if place.endswith(f"({ip})")]
            if ranks:
                return f"{self.where[ranks[0]]}, {describe_ranks(ranks)}"
        return None

    def abort(self):
        """Kill every actor now (a request in flight is lost) and remove the placement group this
        launcher made (never its caller's); later requests are refused."""
        for actor in self._actors:
            self._ray.kill(actor, no_restart=True)
        self._actors = []
        if self._group is not None and self._own_group:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._group)
        self._group, self._own_group = None, False

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
