"""What every worker does to start, whoever started it: join the process group, load the model."""

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from launch.interfaces import bind_to_rank0_route
from longctx.comm import ProcessGroupComm, bounded_waits_for
from longctx.engine import Engine
from longctx.models import load_model, resolve_device, resolve_dtype


def pick_dist_backend(config, device, local_world):
    """'nccl' when every worker on this machine has its own GPU, else 'gloo' (CPU, or ranks
    sharing a GPU).

    `local_world` is the number of workers on this machine (torchrun's LOCAL_WORLD_SIZE), not
    the job's world size: a 16-rank job on two 8-GPU nodes has a GPU per worker.
    """
    if config.dist_backend != "auto":
        return config.dist_backend
    if device.type == "cuda" and local_world <= torch.cuda.device_count():
        return "nccl"
    return "gloo"


def init_worker(config, rank, world, local_rank=None, local_world=None, init_method="env://", store=None):
    """Join the job's process group (when world > 1) and return (Comm, device) for this worker.

    `local_rank` / `local_world` are this worker's index and the worker count on this machine
    (default: `rank` / `world`, every worker local). Sets the CPU thread count (config.threads,
    or the cores split evenly over the local workers) and the CUDA device. Called by the local
    launcher, the SPMD runner and the Ray launcher. `store` (a torch.distributed Store, e.g. the
    TCPStore rank 0 already listens on) replaces `init_method` for the rendezvous. In a job that
    spans machines (`local_world < world`) gloo and NCCL bind to the interface that routes to
    rank 0's store unless the user chose one (`launch.interfaces.bind_to_rank0_route`). The
    Comm bounds each wait itself on gloo; on NCCL the group's timeout and NCCL's asynchronous
    error handling do (`longctx.comm`).
    """
    local_rank = rank if local_rank is None else local_rank
    local_world = world if local_world is None else local_world
    device = resolve_device(config.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // max(1, local_world)))
    backend = None
    if world > 1:
        backend = pick_dist_backend(config, device, local_world)
        if backend == "nccl":  # a collective past the timeout tears the process down (see longctx.comm)
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        timeout = timedelta(seconds=config.timeout_s)
        if store is None:
            store, _, _ = next(dist.rendezvous(init_method, rank, world, timeout=timeout))
        if local_world < world and getattr(store, "host", None):
            bind_to_rank0_route(store, store.host)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout,
                                device_id=device if backend == "nccl" else None)
    comm = ProcessGroupComm(rank=rank, world=world, timeout_s=config.timeout_s,
                            bounded_waits=bounded_waits_for(backend))
    return comm, device


def build_engine(config, comm, device):
    """Load the model for this worker and wrap it in an Engine. Ends with a barrier: every worker
    must have its model within the collective timeout, so one that hangs while loading fails
    the job (the others' barrier times out; on NCCL the watchdog ends them) instead of leaving
    the driver waiting forever."""
    model = load_model(config.model, device, resolve_dtype(config.dtype, device), config.family, config.rope_scaling)
    comm.barrier()
    return Engine(model, comm, config, device)


def shutdown_worker():
    """Leave the process group if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()
