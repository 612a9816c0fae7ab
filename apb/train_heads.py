"""Train Locret-style retaining heads for APB's `retaining-heads` compressor on your own texts.

    python -m apb.train_heads --model DIR --texts notes.txt papers.txt --out heads.safetensors

Each text is tokenized and cut into chunks of `--seq-len` tokens; the last `--tail` tokens of
a chunk play the question/answer. One dense forward per chunk (the model's own layers, with
longctx's attention hook) records, for every layer, the pre-RoPE q/k/v of the context tokens
(forward hooks on q_proj/k_proj/v_proj) and the target: the attention each context key
receives from the tail tokens, averaged over the tail and the KV head's query group, times
the number of context keys (uniform attention = 1). The heads then learn to predict the
targets from the projections: SmoothL1 plus a smoothness term on neighbouring predictions.
"""

import argparse
import random

import torch
import torch.nn.functional as F

from apb.heads import RetainingHeads
from apb.taps import ProjectionTaps
from longctx.errors import LongCtxError
from longctx.kernels import attention


class RecordingAttention:
    """Stands in for the engine's WorkerContext: dense causal attention that records key targets.

    `attend` is what longctx's registered attention function calls per layer; it stores
    `targets[layer]` = [Hkv, S - tail] float32 (attention received from the tail tokens).
    """

    def __init__(self, total_len, tail):
        self.total_len = total_len
        self.tail = tail
        self.targets = {}

    def attend(self, layer, q, k, v, call):
        """Causal attention out [1, Hq, S, D] (`call`: the layer's `longctx.features.AttentionCall`);
        records the layer's target as a side effect."""
        scale = call.scale
        context = k.shape[2] - self.tail
        question = q[:, :, context:].float()
        scores = torch.einsum("bhqd,bhkd->bhqk", question, k.float().repeat_interleave(q.shape[1] // k.shape[1], dim=1))
        causal = torch.ones(self.tail, k.shape[2], dtype=torch.bool, device=q.device).tril(context)
        probs = scores.mul(scale).masked_fill(~causal, float("-inf")).softmax(dim=-1)
        received = probs[..., :context].mean(dim=2)  # [1, Hq, context]
        received = received.view(1, k.shape[1], -1, context).mean(dim=2)
        self.targets[layer] = (received[0] * context).detach()
        out, _ = attention(q, k, v, causal=True, scale=scale)
        return out


def chunk_texts(tokenizer, texts, seq_len, tail, max_chunks=None):
    """Token id lists of `seq_len` tokens (the last chunk of a text may be shorter, but > 2 * tail)."""
    chunks = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        for start in range(0, len(ids), seq_len):
            piece = ids[start : start + seq_len]
            if len(piece) > 2 * tail:
                chunks.append(piece)
    if not chunks:
        raise LongCtxError(f"no text chunk is longer than 2 x --tail ({2 * tail} tokens)")
    return chunks[:max_chunks] if max_chunks else chunks


def collect_examples(model, chunks, tail):
    """Per chunk: {layer: (features [S-tail, q_dim + 2 kv_dim], target [S-tail, Hkv])}, float32 on the model's device."""
    device = next(model.parameters()).device
    examples = []
    for ids in chunks:
        recorder = RecordingAttention(len(ids), tail)
        with torch.no_grad(), ProjectionTaps(model) as taps:
            model.base_model(input_ids=torch.tensor([ids], device=device), use_cache=False, longctx=recorder)
            context = len(ids) - tail
            example = {}
            for layer, target in recorder.targets.items():
                q, k, v = taps.pop(layer)
                features = torch.cat([q[0, :context], k[0, :context], v[0, :context]], dim=-1).float()
                example[layer] = (features, target.t().contiguous())
        examples.append(example)
    return examples


def heads_loss(heads, example, smooth):
    """Mean over layers of SmoothL1(pred, target) + smooth * mean squared difference of neighbouring predictions."""
    total = 0.0
    for layer, (features, target) in example.items():
        pred = heads.layers[layer](features)
        total = total + F.smooth_l1_loss(pred, target) + smooth * (pred[1:] - pred[:-1]).pow(2).mean()
    return total / len(example)


def train(heads, examples, steps, lr=1e-3, smooth=0.1, seed=0):
    """Adam on one example per step (shuffled cycles); returns the list of per-step losses."""
    optimizer = torch.optim.Adam(heads.parameters(), lr=lr)
    order, losses = [], []
    rng = random.Random(seed)
    for _ in range(steps):
        if not order:
            order = list(range(len(examples)))
            rng.shuffle(order)
        loss = heads_loss(heads, examples[order.pop()], smooth)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def train_heads(model_dir, texts, out, seq_len=1024, tail=64, hidden=256, steps=200, lr=1e-3, smooth=0.1,
                max_chunks=None, device="auto", seed=0):
    """Train heads for the model in `model_dir` on `texts` (list of str) and save them to `out`.

    Returns the per-step losses. Who calls it: `main` (the command) and the tests.
    """
    from longctx.models import load_model, load_tokenizer, resolve_device

    torch.manual_seed(seed)
    resolved = resolve_device(device)
    model = load_model(model_dir, resolved, torch.float32)
    chunks = chunk_texts(load_tokenizer(model_dir), texts, seq_len, tail, max_chunks)
    examples = collect_examples(model, chunks, tail)
    heads = RetainingHeads.for_model(model.config, hidden=hidden).to(resolved)
    losses = train(heads, examples, steps, lr, smooth, seed)
    heads.cpu().save(out)
    return losses


def main(argv=None):
    """Command-line entry: parse arguments, train, save, print a loss summary."""
    parser = argparse.ArgumentParser(prog="python -m apb.train_heads", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local Hugging Face causal-LM directory")
    parser.add_argument("--texts", nargs="+", required=True, help="plain-text files to learn from")
    parser.add_argument("--out", required=True, help="safetensors file to write")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per training chunk")
    parser.add_argument("--tail", type=int, default=64, help="tokens at the end of a chunk acting as question/answer")
    parser.add_argument("--hidden", type=int, default=256, help="width of each head's MLP")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--smooth", type=float, default=0.1, help="weight of the smoothness term")
    parser.add_argument("--max-chunks", type=int, default=None)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        texts = []
        for path in args.texts:
            with open(path, encoding="utf-8") as handle:
                texts.append(handle.read())
        losses = train_heads(args.model, texts, args.out, args.seq_len, args.tail, args.hidden, args.steps,
                             args.lr, args.smooth, args.max_chunks, args.device, args.seed)
    except (LongCtxError, OSError) as exc:
        print(f"apb.train_heads: error: {exc}")
        return 2
    window = max(1, len(losses) // 10)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    print(f"trained {len(losses)} steps: loss {first:.4f} -> {last:.4f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
