"""Independent references for the approximate methods (APB, Star, Spava), layer by layer.

A `Spy` records, on every worker of a run (threads or processes), what the method fed the
model, each layer's post-RoPE q/k/v and attention output, the rows it selected to pass
(`apb.passing.passed_rows`, `spava.select.selected_rows`) and the first new-token call of
each layer with the cache it attended to. The references then rebuild every host's output
from those inputs, the plan and the selected rows alone: the keys each query row may see
are written out as an explicit boolean matrix from the papers' rules (anchor rows never see
passed keys; a block sees exactly the keys passed to it, all of the anchor and its own block
causally; the question and new tokens see the whole context once), and each row attends to
exactly its keys by textbook softmax attention in float64 (`attend_visible`, which agrees
with the torch reference kernel run on each row's gathered keys). Nothing of the methods' own
mask code, kernel calls or merges is used.

`apb_errors(spy, doc, question)` / `spava_errors(...)` check the structure (inputs, selected
rows, caches) with assertions and return {what: largest absolute difference} of the outputs.
"""

import threading

import torch

import apb.passing
import spava.select
from apb.method import APBAttention
from longctx.method import Method
from spava.method import SpavaAttention

TOLERANCE = 1e-5


class Spy:
    """Context manager recording APB / Star / Spava runs (any number of worker threads; in a
    worker process, one per process and `merge` them). Attributes, filled while active:

    plan: the run's Plan; inputs: {rank: (ids, positions)} the method fed the model;
    prefill: {(rank, layer): {"q", "k", "v", "out", "scale", "rows": [selected rows, ...]}};
    decode: {(rank, layer): {"q", "k", "v", "cache_k", "cache_v", "out", "scale"}} of the
    first new-token call (the query pass, or the first decoding step after a fused one).
    """

    def __init__(self):
        self.plan, self.inputs, self.prefill, self.decode = None, {}, {}, {}
        self._current = threading.local()
        self._saved = []

    def __enter__(self):
        for owner, name, wrap in ((APBAttention, "local_inputs", self._inputs),
                                  (SpavaAttention, "local_inputs", self._inputs),
                                  (APBAttention, "prefill_attention", self._prefill),
                                  (SpavaAttention, "prefill_attention", self._prefill),
                                  (Method, "decode_attention", self._decode),
                                  (apb.passing, "passed_rows", self._rows),
                                  (spava.select, "selected_rows", self._rows)):
            original = owner.__dict__[name]
            self._saved.append((owner, name, original))
            setattr(owner, name, wrap(original))
        return self

    def __exit__(self, *exc_info):
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved = []

    def _inputs(self, original):
        def local_inputs(method, plan, rank, doc_ids, query_ids):
            ids, positions = original(method, plan, rank, doc_ids, query_ids)
            self.inputs[rank] = (list(ids), list(positions))
            return ids, positions
        return local_inputs

    def _prefill(self, original):
        def prefill_attention(method, ctx, layer, q, k, v, scale):
            record = {"q": q.clone(), "k": k.clone(), "v": v.clone(), "scale": scale, "rows": []}
            self._current.record = record
            out, lse = original(method, ctx, layer, q, k, v, scale)
            self._current.record = None
            record["out"] = out.clone()
            self.plan = ctx.plan
            self.prefill[(ctx.rank, layer)] = record
            return out, lse
        return prefill_attention

    def _rows(self, original):
        def rows(*args):
            chosen = original(*args)
            record = getattr(self._current, "record", None)
            if record is not None:
                record["rows"].append(chosen.clone())
            return chosen
        return rows

    def _decode(self, original):
        def decode_attention(method, ctx, layer, q, k, v, scale):
            first = (ctx.rank, layer) not in self.decode
            if first:
                cache_k, cache_v = ctx.cache.get(layer)
                record = {"q": q.clone(), "k": k.clone(), "v": v.clone(), "scale": scale,
                          "cache_k": cache_k.clone(), "cache_v": cache_v.clone()}
            out, lse = original(method, ctx, layer, q, k, v, scale)
            if first:
                record["out"] = out.clone()
                self.decode[(ctx.rank, layer)] = record
            return out, lse
        return decode_attention

    def state(self):
        """The records as a picklable dict (what a worker process saves)."""
        return {"plan": self.plan, "inputs": self.inputs, "prefill": self.prefill, "decode": self.decode}

    @classmethod
    def merge(cls, states):
        """One Spy holding the records of every worker process's `state()`."""
        spy = cls()
        for state in states:
            spy.plan = spy.plan or state["plan"]
            for name in ("inputs", "prefill", "decode"):
                getattr(spy, name).update(state[name])
        return spy

    @property
    def layers(self):
        """Layer indices recorded."""
        return sorted({layer for _, layer in self.prefill})


def attend_visible(q, keys, values, visible, scale):
    """out [B, Hq, R, D] float64: query row i of q [B, Hq, R, D] over exactly the keys j of
    keys/values [B, Hkv, K, D] (GQA: query head h reads KV head h // (Hq // Hkv)) with
    visible[i, j] (bool [R, K]); textbook softmax attention in float64 with that mask and no
    other. A row that sees no key gets 0. (`tests/test_approx_reference.py` checks it against
    the torch reference kernel on the gathered keys, row by row.)"""
    group = q.shape[1] // keys.shape[1]
    keys, values = keys.double().repeat_interleave(group, 1), values.double().repeat_interleave(group, 1)
    scores = (q.double() @ keys.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return probs @ values


def take(tensor, rows):
    """tensor [B, H, L, D] at rows [B, H, n] (per head)."""
    return tensor.gather(2, rows[..., None].expand(-1, -1, -1, tensor.shape[-1]))


def largest_difference(value, expected):
    """max |value - expected| as a float (0 for empty tensors)."""
    return float((value.float() - expected.float()).abs().max()) if value.numel() else 0.0


def check_rows(rows, count, low, high, what):
    """Selected rows [B, H, count]: ascending per head, within [low, high)."""
    assert rows.shape[-1] == count, f"{what}: {rows.shape[-1]} rows passed, the plan says {count}"
    if count:
        assert bool((rows[..., 1:] > rows[..., :-1]).all()), f"{what}: rows not strictly ascending"
        assert int(rows.min()) >= low and int(rows.max()) < high, f"{what}: rows outside [{low}, {high})"


def new_token_errors(spy, cached_rows):
    """{"new tokens": error} of the first new-token call of every layer on every rank against
    the exact attention over [every rank's cache in rank order ; the new tokens causally].

    `cached_rows(rank)` are the rows of that rank's prefill k/v its cache must hold
    (checked exactly, so the caches are the prefill's keys and nothing else)."""
    plan, worst = spy.plan, 0.0
    for layer in spy.layers:
        records = [spy.decode[(rank, layer)] for rank in range(plan.world)]
        for rank, record in enumerate(records):
            rows = torch.tensor(cached_rows(rank), dtype=torch.long)
            prefill = spy.prefill[(rank, layer)]
            assert torch.equal(record["cache_k"], prefill["k"].index_select(2, rows)), f"rank {rank} cache keys"
            assert torch.equal(record["cache_v"], prefill["v"].index_select(2, rows)), f"rank {rank} cache values"
        owner = records[plan.append_rank]
        keys = torch.cat([record["cache_k"] for record in records] + [owner["k"]], dim=2)
        values = torch.cat([record["cache_v"] for record in records] + [owner["v"]], dim=2)
        new, context = owner["q"].shape[2], keys.shape[2] - owner["q"].shape[2]
        visible = torch.ones(new, keys.shape[2], dtype=torch.bool)
        visible[:, context:] = torch.ones(new, new, dtype=torch.bool).tril()
        expected = attend_visible(owner["q"], keys, values, visible, owner["scale"])
        worst = max([worst] + [largest_difference(record["out"], expected) for record in records])
    return {"new tokens": worst}


def apb_errors(spy, doc_ids, query_ids, head_tokens=16):
    """Rebuild every APB / Star host's prefill attention (and the query pass) independently.

    Host h runs lead rows (an anchor: `head_tokens` leading document tokens, the question (APB),
    more leading document tokens, at positions 0..lead-1; or, on a host that selects without
    an anchor, a probe of those tokens and the question) and its block at its positions. Its
    keys per layer are [P_h ; lead ; block], P_h = the rows hosts 0..h-1 passed (their local
    keys at the spied rows, per KV head), and:
      anchor rows see the anchor causally, nothing else;
      probe rows see the probe causally, nothing else; the block never sees a probe;
      block rows see all of P_h, all of an anchor and their block causally.
    """
    plan = spy.plan
    anchor = plan.details["anchor_len"]
    errors = {}
    for host in plan.hosts:
        lead, question = host.lead_len, host.question_len
        head = min(head_tokens, lead - question)
        assert host.head_len == head, f"host {host.rank}: {host.head_len} head tokens, expected {head}"
        lead_ids = list(doc_ids[:head]) + (list(query_ids) if question else [])
        lead_ids += list(doc_ids[head : head + lead - len(lead_ids)])
        owned = host.positions()
        assert owned == list(range(owned[0], owned[0] + len(owned))), f"host {host.rank}: block not contiguous"
        expected_inputs = (lead_ids + [doc_ids[pos] for pos in owned], list(range(lead)) + owned)
        assert spy.inputs[host.rank] == expected_inputs, f"host {host.rank}: wrong input ids or positions"
        assert host.anchor_len == (anchor if host.rank else 0), f"host {host.rank}: anchor {host.anchor_len}"
    starts = [host.positions()[0] for host in plan.hosts]
    assert starts == sorted(starts) and starts[0] == 0, "blocks not in rank order"
    for layer in spy.layers:
        records = [spy.prefill[(host.rank, layer)] for host in plan.hosts]
        passed = []  # (keys, values) each host passes this layer
        for host, record in zip(plan.hosts, records):
            protected = min(anchor, host.num_tokens) if host.rank == 0 else 0
            assert host.sends == 0 or host.rank < plan.world - 1, "the last host passes nothing"
            if not any(other.sends for other in plan.hosts):
                assert record["rows"] == [], f"host {host.rank} selected rows with nothing to pass"
                passed.append(None)
                continue
            (rows,) = record["rows"]
            check_rows(rows, host.sends, protected, host.num_tokens, f"host {host.rank} layer {layer}")
            local = slice(host.lead_len, None)
            passed.append((take(record["k"][:, :, local], rows), take(record["v"][:, :, local], rows)))
        for host, record in zip(plan.hosts, records):
            before = [part for part in passed[: host.rank] if part is not None]
            p_len = sum(part[0].shape[2] for part in before)
            assert p_len == host.passing_len, f"host {host.rank}: P_h of {p_len} keys, the plan says {host.passing_len}"
            keys = torch.cat([part[0] for part in before] + [record["k"]], dim=2)
            values = torch.cat([part[1] for part in before] + [record["v"]], dim=2)
            lead, rows = host.lead_len, host.lead_len + host.num_tokens
            visible = torch.zeros(rows, p_len + rows, dtype=torch.bool)
            causal = torch.ones(rows, rows, dtype=torch.bool).tril()
            visible[:lead, p_len : p_len + lead] = causal[:lead, :lead]
            visible[lead:, :p_len] = True
            visible[lead:, p_len + lead :] = causal[lead:, lead:]
            if host.anchor_len:
                visible[lead:, p_len : p_len + lead] = True
            expected = attend_visible(record["q"], keys, values, visible, record["scale"])
            name = f"host {host.rank}"
            errors[name] = max(errors.get(name, 0.0), largest_difference(record["out"], expected))
    errors.update(new_token_errors(spy, lambda rank: range(plan.hosts[rank].lead_len,
                                                           plan.hosts[rank].lead_len + plan.hosts[rank].num_tokens)))
    return errors


def spava_flags(options):
    """spava_errors' keywords for a run with spava `options` (as given to RunConfig): the
    question is in the prefill unless fused_query is off, and cached there unless query_pass."""
    in_prefill = bool(options.get("fused_query", 1))
    return {"question_in_prefill": in_prefill, "question_cached": in_prefill and not options.get("query_pass", 0)}


def spava_errors(spy, doc_ids, query_ids, question_in_prefill=True, question_cached=True):
    """Rebuild every Spava host's prefill attention (and the first new-token call) independently.

    The document after the anchor (a tokens) is cut into 2W virtual blocks in order (W, one per
    host, on the contiguous layout); host r runs [anchor ; its blocks ; question] at positions
    0..a-1, the blocks', n... (no question with `question_in_prefill` False). Block v's
    keys per layer are [P_v ; anchor ; block v], P_v = the rows blocks 0..v-1 passed (per KV
    head), and:
      anchor rows (run with the host's first block) see the anchor causally, nothing else;
      block rows see all of P_v, all of the anchor and their block causally;
      question rows see the anchor once, every block of every host and the question causally.
    The anchor's shards of the hosts' caches cover it exactly once.
    """
    plan = spy.plan
    world, query = plan.world, len(query_ids)
    anchor = plan.hosts[0].anchor_len
    slots = range(len(plan.hosts[0].virtual))
    total = world * len(slots)
    question_ids = list(query_ids) if question_in_prefill else []
    owner_of = {}  # virtual block -> (host, slot)
    for host in plan.hosts:
        assert host.anchor_len == anchor, f"host {host.rank}: anchor {host.anchor_len}"
        for slot, virtual in enumerate(host.virtual):
            owner_of[virtual] = (host, slot)
        positions = list(range(anchor)) + [pos for span in host.blocks for pos in span.positions()]
        expected_inputs = ([doc_ids[pos] for pos in positions] + question_ids,
                           positions + list(range(plan.doc_len, plan.doc_len + len(question_ids))))
        assert spy.inputs[host.rank] == expected_inputs, f"host {host.rank}: wrong input ids or positions"
    assert sorted(owner_of) == list(range(total)), f"not {total} virtual blocks"
    spans = [owner_of[virtual][0].blocks[owner_of[virtual][1]] for virtual in range(total)]
    assert [span.start for span in spans] == [anchor] + [span.stop for span in spans[:-1]], "blocks not in order"
    assert spans[-1].stop == plan.doc_len and max(map(len, spans)) - min(map(len, spans)) <= 1, "uneven blocks"
    shards = sorted(pos for host in plan.hosts for pos in host.shard.positions())
    assert shards == list(range(anchor)), "the anchor's shards do not cover it exactly once"
    errors = {}
    for layer in spy.layers:
        records = {host.rank: spy.prefill[(host.rank, layer)] for host in plan.hosts}
        block, passed = {}, {}  # virtual block -> its (keys, values); what it passed
        for host in plan.hosts:
            record = records[host.rank]
            called = [slot for slot in slots if max(other.sends[slot] for other in plan.hosts)]
            assert len(record["rows"]) == len(called), f"host {host.rank}: {len(record['rows'])} selections"
            for slot in slots:
                local = host.block_rows(slot)
                block[host.virtual[slot]] = (record["k"][:, :, local], record["v"][:, :, local])
            for slot, rows in zip(called, record["rows"]):
                virtual, size = host.virtual[slot], len(host.blocks[slot])
                sends = 0 if virtual == total - 1 else min(plan.details["passing_len"], size)
                check_rows(rows, sends, 0, size, f"host {host.rank} block v{virtual} layer {layer}")
                passed[virtual] = tuple(take(part, rows) for part in block[virtual])
        context = [records[0]["k"][:, :, :anchor], records[0]["v"][:, :, :anchor]]
        for virtual in range(total):
            context = [torch.cat([context[i], block[virtual][i]], dim=2) for i in (0, 1)]
        for host in plan.hosts:
            record, outs = records[host.rank], []
            for slot in slots:
                virtual, local = host.virtual[slot], host.block_rows(slot)
                before = [passed[index] for index in range(virtual) if index in passed]
                p_len = sum(part[0].shape[2] for part in before)
                lead = anchor if slot == 0 else 0  # the anchor's rows run with the first block
                keys = torch.cat([part[0] for part in before] + [record["k"][:, :, :anchor], block[virtual][0]], dim=2)
                values = torch.cat([part[1] for part in before] + [record["v"][:, :, :anchor], block[virtual][1]], dim=2)
                size = local.stop - local.start
                visible = torch.zeros(lead + size, keys.shape[2], dtype=torch.bool)
                visible[:lead, p_len : p_len + lead] = torch.ones(lead, lead, dtype=torch.bool).tril()
                visible[lead:, : p_len + anchor] = True
                visible[lead:, p_len + anchor :] = torch.ones(size, size, dtype=torch.bool).tril()
                rows = slice(local.start - lead, local.stop)
                outs.append(attend_visible(record["q"][:, :, rows], keys, values, visible, record["scale"]))
            if question_in_prefill:
                owner, end = records[plan.append_rank], plan.hosts[plan.append_rank].local_len
                keys = torch.cat([context[0], owner["k"][:, :, end : end + query]], dim=2)
                values = torch.cat([context[1], owner["v"][:, :, end : end + query]], dim=2)
                visible = torch.ones(query, keys.shape[2], dtype=torch.bool)
                visible[:, -query:] = torch.ones(query, query, dtype=torch.bool).tril()
                outs.append(attend_visible(record["q"][:, :, host.local_len :], keys, values, visible,
                                           record["scale"]))
            name = f"host {host.rank}"
            errors[name] = max(errors.get(name, 0.0), largest_difference(record["out"], torch.cat(outs, dim=2)))

    def cached(rank):
        host = plan.hosts[rank]
        rows = list(host.shard.positions()) + list(range(anchor, host.local_len))
        if rank == plan.append_rank and question_in_prefill and question_cached:
            rows += list(range(host.local_len, host.local_len + query))
        return rows

    errors.update(new_token_errors(spy, cached))
    return errors


def gloo_worker(rank, world, init_file, model_dir, jobs, out_dir):
    """Body of one real worker process (gloo over loopback, rendezvous in the file `init_file`):
    run every job (name, method, options, doc_ids, query_ids, max_new_tokens) under a Spy and
    save {name: Spy.state()} to `out_dir`/rank<rank>.pt. Who calls it: the gloo reference test."""
    import os

    from launch.worker import init_worker, shutdown_worker
    from longctx.config import RunConfig
    from longctx.engine import Engine, Request
    from longctx.models import load_model

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    config = RunConfig(model=model_dir, nproc=world, threads=1, timeout_s=120)
    comm, device = init_worker(config, rank, world, init_method=f"file://{init_file}")
    model = load_model(model_dir, device, torch.float32)
    states = {}
    for name, method, options, doc_ids, query_ids, max_new_tokens in jobs:
        engine = Engine(model, comm, config.replace(method=method, **options), device)
        with Spy() as spy:
            engine.run(Request(doc_ids, query_ids, max_new_tokens, method))
        states[name] = spy.state()
    torch.save(states, os.path.join(out_dir, f"rank{rank}.pt"))
    shutdown_worker()
