"""Train the tiny needle-retrieval Llama shipped in examples/models/needle-llama/.

A real Hugging Face ``LlamaForCausalLM`` (GQA, RoPE) with the word-level tokenizer of
:mod:`longctx.eval.tokenizer`, trained from scratch on the RULER-style tasks of
:mod:`longctx.eval.tasks`, so that longctx's prefill methods have a model whose long-context
answers are right or wrong for a reason. Fresh samples every step, loss on the answer tokens,
a length curriculum up to 4096 tokens; seeded (``--seed``), checkpointed (``--ckpt``,
``--resume``), ``--init`` starts from a saved model or checkpoint. At the end it saves the model
and tokenizer into ``--out`` and a record of the run (command, wall time, dense accuracy) as
``TRAINING_RUN.md`` there.

    python examples/train_needle_model.py --out examples/models/needle-llama

examples/models/needle-llama/TRAINING.md has the defaults, what each option was tried for and
what it did, and the exact commands of the shipped model.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from longctx.eval import TASKS, is_correct, make_sample, vocab  # noqa: E402
from longctx.eval.tokenizer import build_tokenizer  # noqa: E402

NEEDLE_RE = re.compile(r"The special magic number for (\w+) is (\d+)\.")
# auxiliary training question (never evaluated): the key of a value, all words in the vocabulary
Q_REVERSE = ("What is the key for the special magic number {value} mentioned in the provided "
             "text? Answer: The special magic number {value} is for")
MIX = {"niah_single": 0.20, "niah_multikey": 0.35, "niah_multivalue": 0.15,
       "niah_multiquery": 0.15, "kv_retrieval": 0.15, "variable_tracking": 0.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="examples/models/needle-llama")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096])
    p.add_argument("--steps", type=int, nargs="+", default=[300, 300, 150, 150, 150, 150],
                   help="steps per stage (one number = the same for every stage)")
    p.add_argument("--tokens-per-step", type=int, default=4096)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--intermediate", type=int, default=384)
    p.add_argument("--rope-theta", type=float, default=100000.0)
    p.add_argument("--init-std", type=float, default=0.05)
    p.add_argument("--attention-bias", type=int, default=0,
                   help="1: biases on the q/k/v/o projections (as Qwen2 has)")
    p.add_argument("--group-init", type=int, default=0,
                   help="1: values share one embedding direction, keys another, at init")
    p.add_argument("--distractors", type=int, nargs=2, default=[1, 6], metavar=("LO", "HI"),
                   help="niah_multikey training samples have LO..HI distractor needles")
    p.add_argument("--extra-questions", type=int, default=0,
                   help="1: multikey samples also ask about every distractor needle")
    p.add_argument("--reverse-questions", type=int, default=0,
                   help="1: multikey samples also ask, for every needle, which key a value "
                        "belongs to (trains value positions to carry their key)")
    p.add_argument("--lm-weight", type=float, default=0.0,
                   help="weight of the next-token loss on the text besides the answers "
                        "(0: answers only); language-model training is what grows the "
                        "previous-token heads an induction circuit is built from")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--nearest-key-head", type=float, default=0.0,
                   help="SCALE > 0: the first layer's head 0 starts as a 'nearest key token' "
                        "head (see nearest_key_head_init); needs --attention-bias 1 and "
                        "--group-init 1")
    p.add_argument("--freeze-first-qk", type=int, default=0,
                   help="steps during which the first layer's q/k projections are not "
                        "trained (keeps the --nearest-key-head as it was built)")
    p.add_argument("--recall-steps", type=int, default=0,
                   help="warm-up steps on short needle-only recall sequences before the "
                        "length curriculum (see recall_batch)")
    p.add_argument("--recall-needles", type=int, nargs=2, default=[2, 3], metavar=("LO", "HI"))
    p.add_argument("--recall-reverse", type=float, default=0.3,
                   help="fraction of recall queries that give a value and ask its key")
    p.add_argument("--recall-batch", type=int, default=64)
    p.add_argument("--mix", nargs="*", default=[],
                   help="task=weight overrides of the task mix, e.g. niah_multikey=0.5")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-samples", type=int, default=6)
    p.add_argument("--ckpt", default="/tmp/needle_ckpt.pt")
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--resume", action="store_true", help="continue from --ckpt")
    p.add_argument("--init", default=None,
                   help="start from this saved model directory or --ckpt file (weights only)")
    p.add_argument("--final-eval-samples", type=int, default=50)
    p.add_argument("--final-eval-lengths", type=int, nargs="*", default=[2048, 4096])
    return p.parse_args(argv)


def build_model(args, tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads,
        max_position_embeddings=32768, rope_parameters={"rope_type": "default",
                                                        "rope_theta": args.rope_theta},
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, initializer_range=args.init_std, rms_norm_eps=1e-5,
        attention_bias=bool(args.attention_bias),
        attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg)
    if args.group_init:
        # structured embedding init: every value number shares one random direction, every
        # key another, so "this is a number / a key" is visible to attention from step 0
        # (otherwise each of the rare value tokens must learn it alone, a long plateau).
        emb = model.model.embed_tokens.weight
        with torch.no_grad():
            for words in ([str(v) for v in range(vocab.VALUE_MIN, vocab.VALUE_MAX + 1)],
                          vocab.KEYS):
                ids = tok.convert_tokens_to_ids(words)
                emb[ids] = 0.5 * emb[ids] + torch.randn(emb.shape[1]) * args.init_std
    if args.nearest_key_head:
        nearest_key_head_init(model, tok, args)
    return model


def nearest_key_head_init(model, tok, args):
    """Make the first layer's head 0 start as a "nearest key token" head.

    The key half of an induction circuit: a value must carry the key two tokens before it
    ("for K is V"), and the question's final "is" the key one token before it, in the same
    form, so that the second layer can match the two. One head that attends the nearest key
    token does both. It is built from (a) the shared key direction ``g`` of ``--group-init``
    (the mean key embedding, normalised): the k weights of KV group 0 read ``g`` on the
    first half of every RoPE frequency pair, so only key tokens get a large key vector, and
    (b) a q bias of ``SCALE`` on the same entries (q weights zero), so the score of position
    p on a key at s is ``SCALE**2 * (x_s . g) * sum_j cos((p - s) * freq_j) / sqrt(head_dim)``:
    the sum over all RoPE frequencies peaks at distance 0 and, with every frequency in it,
    stays below its value at distance 2 for every distance beyond, up to 8K tokens (checked
    for head_dim 32, rope_theta 1e5; with only the fast frequencies far distances alias back). Training changes all of it, after
    ``--freeze-first-qk`` steps if that is set. Used because key binding did not emerge on
    its own in this task (see the module docstring).
    """
    if not (args.attention_bias and args.group_init):
        raise SystemExit("--nearest-key-head needs --attention-bias 1 and --group-init 1")
    attn = model.model.layers[0].self_attn
    head_dim = args.hidden // args.heads
    first = torch.arange(head_dim // 2)  # the first entry of every RoPE pair
    emb = model.model.embed_tokens.weight
    with torch.no_grad():
        shared = emb[tok.convert_tokens_to_ids(vocab.KEYS)].mean(0)
        shared /= shared.norm()
        attn.q_proj.weight[:head_dim] = 0
        attn.q_proj.bias[:head_dim] = 0
        attn.q_proj.bias[first] = args.nearest_key_head
        attn.k_proj.weight[:head_dim] = 0
        attn.k_proj.bias[:head_dim] = 0
        attn.k_proj.weight[first] = args.nearest_key_head * shared


def recall_batch(tok, rng: random.Random, batch: int, needles=(2, 3), reverse: float = 0.3):
    """input_ids and labels of short needle-only recall sequences (the warm-up stage).

    Each row is ``<s>`` and LO..HI needles ("The special magic number for K is V.", keys and
    values distinct), then as many queries, each about a needle drawn at random (with
    replacement, so the last query cannot be guessed by elimination): with probability
    ``reverse`` a value followed by its key (the key is the label: the associative-recall
    step, whose solution is value positions that carry their key), otherwise the needle
    repeated up to "is" followed by its value (the label). Labels are -100 elsewhere;
    right-padded with ``pad``.
    """
    def enc(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    seqs, labs = [], []
    for _ in range(batch):
        n = rng.randint(*needles)
        keys = rng.sample(vocab.KEYS, n)
        values = rng.sample(range(vocab.VALUE_MIN, vocab.VALUE_MAX + 1), n)
        seq = [tok.bos_token_id]
        for key, value in zip(keys, values):
            seq += enc(" " + vocab.NEEDLE.format(key=key, value=value))
        lab = [-100] * len(seq)
        for _ in range(n):
            i = rng.randrange(n)
            if rng.random() < reverse:
                query, answer, tail = enc(f" {values[i]}"), enc(" " + keys[i]), []
            else:
                query = enc(" " + vocab.NEEDLE.format(key=keys[i], value=0).rsplit(" ", 1)[0])
                answer, tail = enc(f" {values[i]}"), enc(" .")
            seq += query + answer + tail
            lab += [-100] * len(query) + answer + [-100] * len(tail)
        seqs.append(seq)
        labs.append(lab)
    return pad_batch(tok, seqs, labs)


def pad_batch(tok, seqs, labs):
    """(input_ids, labels) long tensors [rows, longest]: `seqs` right-padded with pad, `labs`
    with -100 (no loss)."""
    n = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), n), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(seqs), n), -100, dtype=torch.long)
    for i, (x, y) in enumerate(zip(seqs, labs)):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
    return ids, labels


def grow_from(model, state):
    """Load a checkpoint's weights into `model`, which may have more layers than it.

    The checkpoint's first layers keep their place, its last layer becomes the model's last,
    and the new layers in between start as the identity (their attention and MLP output
    projections are zero), so the grown model computes what the checkpoint did. Used to add
    the middle layer an induction circuit needs (see the module docstring).
    """
    old = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("model.layers."))
    new = model.config.num_hidden_layers
    if old > new:
        raise SystemExit(f"--init has {old} layers, more than --layers {new}")
    place = {i: (i if i < old - 1 else new - 1) for i in range(old)}
    moved = {}
    for key, value in state.items():
        if key.startswith("model.layers."):
            parts = key.split(".")
            parts[2] = str(place[int(parts[2])])
            key = ".".join(parts)
        moved[key] = value
    missing, unexpected = model.load_state_dict(moved, strict=False)
    grown = {f"model.layers.{i}." for i in range(old - 1, new - 1)}
    missing = [key for key in missing if not any(key.startswith(prefix) for prefix in grown)]
    if unexpected or missing:
        raise SystemExit(f"--init: checkpoint does not fit the model: unexpected {unexpected[:3]}, "
                         f"missing {missing[:3]}")
    with torch.no_grad():
        for i in range(old - 1, new - 1):
            layer = model.model.layers[i]
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()


def training_batch(tok, rng: random.Random, length: int, batch: int, seed: int, step: int,
                   extra_questions: bool = False, distractors=(1, 6),
                   reverse_questions: bool = False):
    """input_ids and labels (-100 except answer tokens + </s>), right-padded."""
    seqs, labs = [], []
    tasks, weights = zip(*MIX.items())
    for b in range(batch):
        task = rng.choices(tasks, weights)[0]
        lo = length // 2 if task == "niah_single" else max(length // 2, 224)
        L = rng.randint(lo, max(lo, length))
        kw = {"num_distractors": rng.randint(*distractors)} if task == "niah_multikey" else {}
        s = make_sample(task, L, seed=seed * 1_000_003 + step, index=b, **kw)
        prompt = tok(s.prompt)["input_ids"]
        ans = tok(" " + s.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seq, lab = prompt + ans, [-100] * len(prompt) + ans
        if task == "niah_multikey" and (extra_questions or reverse_questions):
            # more supervision from the same forward pass: after the first answer, ask about
            # the other needles too, and/or which key each value belongs to (each answer
            # followed by </s>)
            needles = NEEDLE_RE.findall(s.document)
            asks = [(vocab.Q_SINGLE.format(key=k), v) for k, v in needles
                    if extra_questions and v != s.answer]
            asks += [(Q_REVERSE.format(value=v), k) for k, v in needles if reverse_questions]
            rng.shuffle(asks)
            for question, answer in asks:
                q = tok("\n" + question, add_special_tokens=False)["input_ids"]
                a = tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                seq, lab = seq + q + a, lab + [-100] * len(q) + a
        seqs.append(seq)
        labs.append(lab)
    return pad_batch(tok, seqs, labs)


def answer_loss(model, ids, labels, pad_id, lm_weight=0.0):
    """Cross-entropy on the answer tokens (`labels` != -100), plus `lm_weight` times the
    next-token loss on every other non-pad token (the text itself; 0 = answers only)."""
    # causal + right padding: no attention mask needed
    hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
    tgt = labels[:, 1:]
    sel = tgt != -100
    loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[sel]).float(), tgt[sel])
    if lm_weight:
        text = ids[:, 1:]
        rest = ~sel & (text != pad_id)
        loss = loss + lm_weight * torch.nn.functional.cross_entropy(
            model.lm_head(hidden[rest]).float(), text[rest])
    return loss


@torch.no_grad()
def recall_accuracy(model, tok, needles, batch: int = 64, seed: int = 999) -> dict:
    """Share of right answers (argmax) on a fixed recall batch, split into forward queries
    (value asked by its needle) and reverse ones (key asked by its value)."""
    ids, labels = recall_batch(tok, random.Random(seed), batch, needles, reverse=0.5)
    model.eval()
    pred = model(input_ids=ids).logits[:, :-1].argmax(-1)
    model.train()
    tgt = labels[:, 1:]
    is_key = torch.isin(tgt, torch.tensor(tok.convert_tokens_to_ids(vocab.KEYS)))
    out = {}
    answered = tgt != -100
    for name, sel in (("recall_forward", answered & ~is_key),
                      ("recall_reverse", answered & is_key)):
        out[name] = (pred[sel] == tgt[sel]).float().mean().item()
    return out


@torch.no_grad()
def greedy(model, tok, prompt: str, max_new: int) -> str:
    ids = torch.tensor([tok(prompt)["input_ids"]])
    out = model.generate(ids, max_new_tokens=max_new, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def evaluate(model, tok, tasks, length, n, seed):
    model.eval()
    acc = {}
    for task in tasks:
        ok = 0
        for s in (make_sample(task, length, seed, i) for i in range(n)):
            max_new = len(tok(" " + s.answer, add_special_tokens=False)["input_ids"]) + 2
            ok += is_correct(greedy(model, tok, s.prompt, max_new), s)
        acc[task] = ok / n
    model.train()
    return acc


def write_training_md(path, args, wall, params, final, argv):
    cmd = "python examples/train_needle_model.py " + " ".join(argv)
    lines = [
        "# needle-llama: record of one training run", "",
        "A tiny Llama (GQA, RoPE) with a word-level tokenizer, trained from scratch on the",
        "RULER-style tasks of `longctx/eval/tasks.py` by `examples/train_needle_model.py`.", "",
        f"- parameters: {params:,} ({args.layers} layers, hidden {args.hidden}, "
        f"{args.heads} query / {args.kv_heads} KV heads, SwiGLU {args.intermediate}, "
        f"rope_theta {args.rope_theta:g}, tied embeddings)",
        f"- curriculum (length: steps): "
        + ", ".join(f"{L}: {s}" for L, s in zip(args.lengths, _steps(args))),
        f"- tokens per step {args.tokens_per_step}, AdamW lr {args.lr:g}, seed {args.seed}, "
        f"{args.threads} CPU threads",
        f"- wall time of this run: {wall / 60:.1f} min", "",
        "Command of this run:", "", "```", cmd, "```", "",
        "Dense greedy accuracy at the end of this run (`examples/eval_dense.py`, "
        f"{args.final_eval_samples} samples, seed 1234):", "",
        "| task | length | accuracy |", "|---|---|---|"]
    for (task, L), a in final.items():
        lines.append(f"| {task} | {L} | {a:.0%} |")
    lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def _steps(args):
    return args.steps if len(args.steps) == len(args.lengths) else args.steps[:1] * len(
        args.lengths)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    for kv in args.mix:
        task, w = kv.split("=")
        if task not in MIX:
            raise SystemExit(f"--mix: unknown task {task!r}")
        MIX[task] = float(w)
    torch.manual_seed(args.seed)
    tok = build_tokenizer()
    if args.init and os.path.isfile(args.init):
        model = build_model(args, tok)
        grow_from(model, torch.load(args.init, weights_only=False)["model"])
    elif args.init:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(args.init, dtype=torch.float32)
    else:
        model = build_model(args, tok)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params:,} parameters", flush=True)
    # length 0 = the recall warm-up stage (recall_batch), then the length curriculum
    stages = [(0, args.recall_steps)] * bool(args.recall_steps) + list(
        zip(args.lengths, _steps(args)))
    total = sum(s for _, s in stages)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98),
                            weight_decay=args.weight_decay)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, total - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    step, elapsed = 0, 0.0
    if args.resume and os.path.exists(args.ckpt):
        ck = torch.load(args.ckpt, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, elapsed = ck["step"], ck["elapsed"]
        print(f"resumed at step {step} ({elapsed / 60:.1f} min)", flush=True)
    rng = random.Random(f"train/{args.seed}/{step}")
    t0 = time.time() - elapsed
    model.train()
    ema = None
    done = 0
    for length, n_steps in stages:
        if step >= done + n_steps:
            done += n_steps
            continue
        batch = max(1, args.tokens_per_step // length) if length else args.recall_batch
        print(f"== stage length {length or 'recall'}, batch {batch}, steps {n_steps}",
              flush=True)
        while step < done + n_steps:
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            if length:
                ids, labels = training_batch(tok, rng, length, batch, args.seed, step,
                                             bool(args.extra_questions), args.distractors,
                                             bool(args.reverse_questions))
            else:
                ids, labels = recall_batch(tok, rng, batch, args.recall_needles,
                                           args.recall_reverse)
            loss = answer_loss(model, ids, labels, tok.pad_token_id, args.lm_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step < args.freeze_first_qk:
                first = model.model.layers[0].self_attn
                for param in (*first.q_proj.parameters(), *first.k_proj.parameters()):
                    param.grad = None  # AdamW skips it: no update, no weight decay
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
            if step % 10 == 0:
                print(f"step {step}/{total} len {length} loss {ema:.3f} lr {lr_at(step):.2e} "
                      f"t {(time.time() - t0) / 60:.1f}m", flush=True)
            if step % args.eval_every == 0:
                acc = (evaluate(model, tok, TASKS, length, args.eval_samples, 999) if length
                       else recall_accuracy(model, tok, args.recall_needles))
                print(f"eval step {step} len {length}: "
                      + " ".join(f"{k}={v:.2f}" for k, v in acc.items()), flush=True)
            if step % args.ckpt_every == 0:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                            "elapsed": time.time() - t0}, args.ckpt + ".tmp")
                os.replace(args.ckpt + ".tmp", args.ckpt)
        done += n_steps
        model.save_pretrained(args.out)
        tok.save_pretrained(args.out)
        print(f"saved {args.out} after stage {length}", flush=True)
    wall = time.time() - t0
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    final = {}
    for L in args.final_eval_lengths:
        acc = evaluate(model, tok, TASKS, L, args.final_eval_samples, 1234)
        for k, v in acc.items():
            final[(k, L)] = v
        print(f"final len {L}: " + " ".join(f"{k}={v:.2f}" for k, v in acc.items()), flush=True)
    write_training_md(os.path.join(args.out, "TRAINING_RUN.md"), args, wall, params, final, argv)
    print(f"done in {wall / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
