"""Which keys APB's query compressor passes, against what dense attention uses.

    python benchmarks/apb_selection.py --out benchmarks/results/apb_selection.json

For each sample (a task of `longctx.eval.tasks` at --length tokens, the shipped model's
tokenizer) and each host that selects keys in APB's default plan on --hosts hosts, every
layer, per KV head:

* **anchor**: the query compressor's top-l_p set (`QueryCompressor.scores` + `select`, pooled,
  host 0's protected rows excluded) scored with the question's queries where they sit in
  the anchor (positions head_len..);
* **true**: the same, the queries moved by RoPE to the question's true positions (doc_len..),
  what the compressor does now;
* two oracles from one dense forward of the whole prompt: **later** = the l_p keys of the
  block that the later blocks' queries attend to most (attention mass summed over their rows
  and the KV head's query heads), **question** = the l_p keys the question's rows attend to
  most.

Reported: the mean overlap |A ∩ B| / l_p of each pair (chance is about l_p / block). The
question's queries come from a forward of the lead rows alone (as every host runs them); the
block's keys from the dense forward (exact at layer 0, dense rather than APB's at later
layers).
"""

import argparse
import json
import os
import sys

import torch

from apb.compress import CompressorState, QueryCompressor, select
from apb.layout import APBLayout, resolve_sizes, lead_inputs
from apb.method import APBOptions
from longctx.eval.harness import prompt_ids
from longctx.eval.tasks import make_samples
from longctx.models import load_model, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    """Command-line options (defaults: the committed run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "examples", "models", "needle-llama"))
    parser.add_argument("--tasks", nargs="+", default=["niah_single"])
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    return parser.parse_args(argv)


class Recorder:
    """A `longctx=` context for a plain forward: dense causal attention that keeps, per layer,
    the post-RoPE queries and keys and (when `mass` is set) the attention mass each key gets
    from the query rows in `mass` ({name: slice of query rows})."""

    def __init__(self, mass=None):
        self.total_len, self.mass = 0, mass or {}
        self.q, self.k, self.received = [], [], []

    def attend(self, layer, q, k, v, call):
        scale = call.scale
        group = q.shape[1] // k.shape[1]
        keys, values = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        self.q.append(q.float())
        self.k.append(k.float())
        if self.mass:
            probs = torch.softmax((q @ keys.transpose(-1, -2)) * scale
                                  + torch.full((q.shape[2], k.shape[2]), float("-inf")).triu(1), dim=-1)
            self.received.append({name: probs[:, :, rows].sum(dim=2).reshape(1, k.shape[1], group, -1).sum(dim=2)
                                  for name, rows in self.mass.items()})
        return torch.nn.functional.scaled_dot_product_attention(q, keys, values, is_causal=True, scale=scale)


def forward(model, ids, positions, recorder):
    """Run `ids` at `positions` through the base model with `recorder` as the attention."""
    with torch.no_grad():
        model.base_model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions]), longctx=recorder)
    return recorder


def overlap(a, b, sends):
    """Mean over KV heads of |a ∩ b| / sends for index tensors [1, Hkv, sends]."""
    shared = [len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a[0], b[0])]
    return sum(shared) / (len(shared) * sends)


def top_mass(mass, host):
    """The `host.sends` keys of the block with the most mass [1, Hkv, L], protected rows excluded."""
    mass = mass.clone()
    mass[..., : host.protected] = float("-inf")
    return mass.topk(host.sends, dim=-1).indices


def measure_sample(model, doc_ids, query_ids, hosts):
    """{pair: [overlap per (host, layer)]} for one sample (see the module docstring)."""
    doc_len, query_len = len(doc_ids), len(query_ids)
    sizes = resolve_sizes(APBOptions(), doc_len, query_len, hosts, star=False)
    plan = APBLayout(sizes, doc_len, query_len, hosts, question=query_len, needs_question=True,
                     head_tokens=APBOptions().anchor_head_tokens).plan("apb")
    selecting = [host for host in plan.hosts if host.selects]
    mass = {f"later{host.rank}": slice(host.spans[-1].stop, doc_len) for host in selecting}
    mass["question"] = slice(doc_len, doc_len + query_len)
    dense = forward(model, doc_ids + query_ids, list(range(doc_len + query_len)), Recorder(mass))
    compressor, pairs = QueryCompressor(APBOptions()), {}
    for host in selecting:
        lead_ids, lead_positions = lead_inputs(host, doc_ids, query_ids)
        lead = forward(model, lead_ids, lead_positions, Recorder())
        block = slice(host.spans[0].start, host.spans[-1].stop)
        state = CompressorState(question_start=doc_len)
        compressor.hooks(state, model, host)
        for layer in range(len(dense.k)):
            k = torch.cat([lead.k[layer], dense.k[layer][:, :, block]], dim=2)
            q = lead.q[layer]
            chosen = {
                "anchor": select(compressor.scores(None, layer, host, q, k, k), host.sends, host.protected,
                                 compressor.pool),
                "true": select(compressor.scores(state, layer, host, q, k, k), host.sends, host.protected,
                               compressor.pool),
                "later": top_mass(dense.received[layer][f"later{host.rank}"][..., block], host),
                "question": top_mass(dense.received[layer]["question"][..., block], host),
            }
            for a, b in (("anchor", "true"), ("anchor", "later"), ("true", "later"),
                         ("anchor", "question"), ("true", "question"), ("later", "question")):
                pairs.setdefault(f"{a}~{b}", []).append(overlap(chosen[a], chosen[b], host.sends))
    chance = [host.sends / (host.num_tokens - host.protected) for host in selecting]
    return pairs, sum(chance) / len(chance), sizes


def main(argv=None):
    """Measure and print (and with --out write) the mean overlaps per task and layer."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, torch.device("cpu"), torch.float32)
    tokenizer = load_tokenizer(args.model)
    report = {"model": os.path.relpath(args.model, ROOT), "length": args.length, "hosts": args.hosts,
              "samples": args.samples, "seed": args.seed, "tasks": {}}
    for task in args.tasks:
        pairs, chances = {}, []
        for sample in make_samples(task, args.length, args.samples, seed=args.seed, tokenizer=tokenizer):
            got, chance, sizes = measure_sample(model, *prompt_ids(tokenizer, sample), args.hosts)
            chances.append(chance)
            for name, values in got.items():
                pairs.setdefault(name, []).extend(values)
        layers = model.config.num_hidden_layers
        report["tasks"][task] = {
            "passing_len": sizes.passing, "anchor_len": sizes.anchor, "chance": sum(chances) / len(chances),
            "overlap": {name: sum(values) / len(values) for name, values in pairs.items()},
            "overlap_per_layer": {name: [sum(values[layer::layers]) / len(values[layer::layers])
                                         for layer in range(layers)] for name, values in pairs.items()},
        }
        print(task, json.dumps(report["tasks"][task], indent=1))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
