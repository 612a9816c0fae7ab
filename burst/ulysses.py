"""Ulysses (DeepSpeed) sequence parallelism: all-to-all from sequence shards to head shards.

Each worker holds a contiguous shard of the sequence. Before attention an all-to-all gives
worker g the full sequence for query heads [g*Hq/P, (g+1)*Hq/P) and the KV heads they read
(KV heads are sent to every worker that needs them, so P may exceed the KV head count);
attention runs causally on the full sequence; a second all-to-all returns the outputs.
"""

import torch

from longctx.costmodel import HostWork, KernelCall
from longctx.errors import LongCtxError
from longctx.method import Method
from longctx.planner import Planner


def head_ranges(q_heads, kv_heads, world):
    """Per worker: (q_lo, q_hi, kv_lo, kv_hi) head ranges it attends for."""
    per_rank = q_heads // world
    group = q_heads // kv_heads
    ranges = []
    for rank in range(world):
        q_lo, q_hi = rank * per_rank, (rank + 1) * per_rank
        ranges.append((q_lo, q_hi, q_lo // group, (q_hi - 1) // group + 1))
    return ranges


class UlyssesPlanner(Planner):
    """Contiguous shards, sized per `config.balance`; the worker count must split the heads."""

    def check(self, model_config, world):
        """P must divide the query heads, and each worker's heads must map evenly to KV heads."""
        q_heads = model_config.num_attention_heads
        kv_heads = getattr(model_config, "num_key_value_heads", None) or q_heads
        if q_heads % world:
            raise LongCtxError(
                f"ulysses needs the worker count ({world}) to divide the attention heads ({q_heads})"
            )
        per_rank, group = q_heads // world, q_heads // kv_heads
        if per_rank % group and group % per_rank:
            raise LongCtxError(
                f"ulysses cannot split {q_heads} query heads over {kv_heads} KV heads on {world} workers evenly"
            )
        super().check(model_config, world)

    def host_work(self, plan, host):
        """Causal attention over the whole document for this rank's heads (`head_ranges`, as the
        attention splits them); three all-to-alls: q, [k; v] in, the output back."""
        shape, rows, doc_len = self.cost_model().shape, host.num_tokens, plan.doc_len
        q_lo, q_hi, kv_lo, kv_hi = head_ranges(shape.heads, shape.kv_heads, plan.world)[host.rank]
        q_heads, kv_heads = q_hi - q_lo, kv_hi - kv_lo
        value = shape.head_dim * shape.dtype_bytes
        received = (doc_len - rows) * (q_heads + 2 * kv_heads) * value + rows * (shape.heads - q_heads) * value
        return HostWork.of_calls([KernelCall(doc_len, doc_len)], q_heads, rows=rows, recv_bytes=received,
                                 messages=3 * (plan.world - 1))


class UlyssesAttention(Method):
    """Exact attention by head-parallel all-to-all."""

    name = "ulysses"
    Planner = UlyssesPlanner

    def prefill_attention(self, ctx, layer, q, k, v, scale):
        """Sequence shards -> head shards, causal attention, and back: (out, lse); lse makes the
        way back only when `ctx.needs_lse` (one more all-to-all, of one float per row and
        head), else it is None."""
        ctx.cache.store(layer, k, v)
        comm, hosts = ctx.comm, ctx.plan.hosts
        lengths = [host.num_tokens for host in hosts]
        ranges = head_ranges(q.shape[1], k.shape[1], comm.world)
        full_q = _to_heads(comm, q, [(lo, hi) for lo, hi, _, _ in ranges], lengths)
        full_kv = _to_heads(comm, torch.stack([k, v]), [(lo, hi) for _, _, lo, hi in ranges], lengths, head_dim=2)
        out, lse = ctx.kernels.attention(full_q, full_kv[0], full_kv[1], causal=True, scale=scale)
        if ctx.needs_lse:
            lse = _to_sequence(comm, lse[..., None], lengths, q.shape[1])[..., 0]
        return _to_sequence(comm, out, lengths, q.shape[1]), lse if ctx.needs_lse else None


def _to_heads(comm, tensor, head_ranges_per_rank, lengths, head_dim=1):
    """[.., H, S_r, D] shard -> [.., h_g, S, D] with this rank's heads over the full sequence."""
    seq_dim = head_dim + 1
    sends = [tensor.narrow(head_dim, lo, hi - lo).contiguous().reshape(-1) for lo, hi in head_ranges_per_rank]
    lo, hi = head_ranges_per_rank[comm.rank]
    own_shape = list(tensor.shape)
    own_shape[head_dim] = hi - lo
    recv_sizes = []
    for length in lengths:
        own_shape[seq_dim] = length
        recv_sizes.append(_numel(own_shape))
    received = comm.all_to_all(torch.cat(sends), [part.numel() for part in sends], recv_sizes)
    pieces = []
    for part, length in zip(received.split(recv_sizes), lengths):
        own_shape[seq_dim] = length
        pieces.append(part.view(own_shape))
    return torch.cat(pieces, dim=seq_dim)


def _to_sequence(comm, out, lengths, total_heads):
    """[B, h_g, S, D] (this rank's heads, full sequence) -> [B, Hq, S_r, D] (all heads, own shard)."""
    batch, heads, _, dim = out.shape
    sends = [part.contiguous().reshape(-1) for part in out.split(lengths, dim=2)]
    per_rank = total_heads // comm.world
    my_len = lengths[comm.rank]
    received = comm.all_to_all(torch.cat(sends), [part.numel() for part in sends],
                               [batch * per_rank * my_len * dim] * comm.world)
    return received.view(comm.world, batch, per_rank, my_len, dim).permute(1, 0, 2, 3, 4).reshape(
        batch, total_heads, my_len, dim)


def _numel(shape):
    count = 1
    for size in shape:
        count *= size
    return count
