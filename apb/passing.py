"""Passing blocks: pick this host's compressed block and all-gather everyone's, once per layer."""

from dataclasses import dataclass

import torch

from apb.compress import select
from longctx.results import RequestStats


@dataclass
class PassingStats(RequestStats):
    """Counters of a method with passing blocks (APB, Star, Spava): `passing_bytes_per_layer`,
    the bytes of K and V all hosts contribute to one layer's passing all-gathers."""

    passing_bytes_per_layer: int = 0


def passed_rows(compressor, state, layer, host, q, k, v):
    """Local rows (after the host's lead rows) this host passes: int64 [B, Hkv, host.sends],
    ascending per KV head.

    When the host passes all of its candidates (or none) no scoring happens: the rows are
    protected..protected + sends for every head. Otherwise `compressor` scores the keys and
    `select` keeps the top `host.sends` per KV head. `state` is the compressor's per-request
    state (`CompressorState`). Who calls it: `compressed_block` (tests spy on it to rebuild a
    host's attention independently).
    """
    if not host.selects:
        rows = torch.arange(host.protected, host.protected + host.sends, device=k.device)
        return rows.expand(k.shape[0], k.shape[1], host.sends)
    return select(compressor.scores(state, layer, host, q, k, v), host.sends, host.protected, compressor.pool)


def compressed_block(compressor, state, layer, host, q, k, v):
    """This host's compressed (post-RoPE) block: (keys, values) [B, Hkv, host.sends, D], the
    local rows of `passed_rows` in position order."""
    index = passed_rows(compressor, state, layer, host, q, k, v)[..., None].expand(-1, -1, -1, k.shape[-1])
    return k[:, :, host.lead_len :].gather(2, index), v[:, :, host.lead_len :].gather(2, index)


def all_gather_blocks(ctx, keys, values):
    """Every host's compressed block, in rank order: a list of (keys, values) [B, Hkv, sends_r, D].

    One all-gather per layer (sizes differ per host; the collective pads to the longest).
    Records the payload in `ctx.stats.passing_bytes_per_layer` (`PassingStats`): bytes of the K
    and V all hosts contribute to one layer (the per-host token counts are in the plan).
    """
    sizes = [host.sends for host in ctx.plan.hosts]
    parts = ctx.comm.all_gather(torch.stack([keys, values]), sizes=sizes, dim=3)
    per_token = 2 * keys.shape[0] * keys.shape[1] * keys.shape[3] * keys.element_size()
    ctx.stats.passing_bytes_per_layer = per_token * sum(sizes)
    return [(part[0], part[1]) for part in parts]
