"""Memory a request needs per worker, estimated on the driver before anything is sent.

A worker holds the model's weights, the K/V cache of the tokens it keeps (its share of the
document; the question and the generated tokens on the host that appends them) and, while a
layer runs, that layer's activations over its rows and the keys it attends to. The estimate is
deliberately simple and errs high: the weights as if the LM head were untied, one layer's K/V of
the whole document as transient keys (what the all-gather and Ulysses hold; the ring holds less),
fp32 logits of the question.

`check_memory` compares it with what the local machine has: on CUDA each worker's estimate
against one GPU's memory; on the CPU the sum over all local workers against the available RAM.
"""

import os

from longctx.errors import LongCtxError

GIB = 1024 ** 3
CUDA_USABLE = 0.9  # share of a GPU's memory a worker may plan to use (the rest: CUDA context, allocator slack)


def weight_bytes(shape, vocab):
    """Bytes of the weights of a model of `shape` (a `ModelShape`) with `vocab` tokens."""
    q_dim, kv_dim = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    per_layer = shape.hidden * (2 * q_dim + 2 * kv_dim) + 3 * shape.hidden * shape.intermediate + 2 * shape.hidden
    return (shape.layers * per_layer + 2 * vocab * shape.hidden) * shape.dtype_bytes


def host_bytes(shape, vocab, plan, host, max_new_tokens):
    """{"weights", "kv_cache", "activations", "total"} in bytes for `host` of `plan`."""
    kv_row = 2 * shape.kv_heads * shape.head_dim * shape.dtype_bytes
    cached = host.num_tokens + (plan.query_len + max_new_tokens if host.rank == plan.append_rank else 0)
    rows = host.num_tokens + host.lead_len
    row_bytes = (4 * shape.hidden + 3 * shape.intermediate + (shape.heads + 2 * shape.kv_heads) * shape.head_dim)
    activations = (rows * row_bytes * shape.dtype_bytes + (plan.doc_len + host.received_len) * kv_row
                   + plan.query_len * vocab * 4)
    parts = {"weights": weight_bytes(shape, vocab), "kv_cache": shape.layers * cached * kv_row,
             "activations": activations}
    parts["total"] = sum(parts.values())
    return parts


def available_bytes(device):
    """(bytes one worker may use, True if the workers share them): one GPU's usable memory on
    CUDA, this machine's available RAM (shared by the local workers) on the CPU; None when unknown."""
    if device == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory * CUDA_USABLE), False
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields["MemAvailable"].split()[0]) * 1024, True
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "SC_AVPHYS_PAGES") else None
        return (pages * os.sysconf("SC_PAGE_SIZE"), True) if pages else (None, True)


def needed_bytes(shape, vocab, plan, max_new_tokens, shared, local_workers=None):
    """What the job needs of the compared budget: when the workers share one machine's memory,
    the sum over the `local_workers` largest hosts (None: all of them, every worker on this
    machine), else the largest host's."""
    totals = sorted((host_bytes(shape, vocab, plan, host, max_new_tokens)["total"] for host in plan.hosts),
                    reverse=True)
    return sum(totals[:local_workers]) if shared else totals[0]


def check_memory(planner, plan, vocab, max_new_tokens, device, available=None, max_workers=64, local_workers=None):
    """LongCtxError when `plan` (made by `planner`, whose `shape` is the model's) needs more memory
    than the local machine has for its `local_workers` (None: every worker runs here): names the
    estimate, its parts, the budget and a worker count that would fit (re-planned with `planner`),
    or says none does. `available` (bytes, shared) overrides what `available_bytes(device)`
    finds (tests)."""
    budget, shared = available if available is not None else available_bytes(device)
    if budget is None:
        return
    shape = planner.cost_model().shape
    needed = needed_bytes(shape, vocab, plan, max_new_tokens, shared, local_workers)
    if needed <= budget:
        return
    largest = max(plan.hosts, key=lambda host: host_bytes(shape, vocab, plan, host, max_new_tokens)["total"])
    parts = host_bytes(shape, vocab, plan, largest, max_new_tokens)
    where = f"the {budget / GIB:.1f} GiB available on this machine" if shared else \
        f"one GPU's usable {budget / GIB:.1f} GiB"
    fits = _worker_count_that_fits(planner, plan, vocab, max_new_tokens, budget, shared, max_workers)
    advice = (f"use --nproc {fits}" if fits else "no worker count fits in this machine's memory: use a shorter "
              "document, or GPUs (a cluster)" if shared else "no worker count fits: use more or larger GPUs, or a "
              "shorter document")
    scope = f" x {plan.world} workers" if shared and plan.world > 1 else ""
    raise LongCtxError(
        f"the request needs an estimated {parts['total'] / GIB:.2f} GiB per worker{scope} (weights "
        f"{parts['weights'] / GIB:.2f}, K/V cache {parts['kv_cache'] / GIB:.2f}, activations "
        f"{parts['activations'] / GIB:.2f} GiB), more than {where}; {advice}")


def _worker_count_that_fits(planner, plan, vocab, max_new_tokens, budget, shared, max_workers):
    shape = planner.cost_model().shape
    for world in range(1, max_workers + 1):
        if world == plan.world:
            continue
        try:
            trial = planner.plan(plan.doc_len, plan.query_len, world)
        except LongCtxError:
            continue
        if needed_bytes(shape, vocab, trial, max_new_tokens, shared) <= budget:
            return world
    return None


def kv_token_bytes(shape):
    """Bytes of one token's K/V over every layer of a model of `shape` (a `ModelShape`)."""
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * shape.dtype_bytes


def default_cache_bytes(shape, vocab, device, workers, share=0.5):
    """A per-worker budget for the document cache (`longctx.doc_cache`): `share` of what each of
    `workers` local workers has left after its weights (RAM shared by the workers on the CPU,
    one GPU each on CUDA); 1 GiB when the memory is unknown."""
    budget, shared = available_bytes(device)
    if budget is None:
        return GIB
    per_worker = budget / workers if shared else budget
    return max(0, int(share * (per_worker - weight_bytes(shape, vocab))))
