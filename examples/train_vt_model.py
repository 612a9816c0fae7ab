"""Train vt-llama: the needle model grown so that it resolves variable tracking during prefill.

    python examples/train_vt_model.py --out examples/models/vt-llama

`variable_tracking` (longctx.eval.tasks) puts "The value of A is 42." on one host and "The value
of B is the value of A." on a later one; asked for B, a model must have copied 42 into B's
statement while the document was encoded, which needs the earlier block's tokens: the case
where APB's passing blocks matter. The shipped needle model (examples/models/needle-llama, two
layers) finds a needle by its key; this script grows it to `3 + --hops` layers, each with one
job, and trains it on variable tracking with `--hops` copies per chain plus the needle tasks:

    layer 0            the needle model's layer 0: every position holds its nearest key token
    layer 1            new: head 0 reads the token five back, so the "." that ends "The value
                       of B is the value of A." also holds B (its "is" holds B from layer 0)
    layer 2            the needle model's layer 1 (look a key's value up): that "." holds A,
                       and takes A's value
    layers 3..1+hops   copies of it: a later copy's "." takes the value of the copy it names
    last layer         a copy of it: the question ("... The value of B is") finds the
                       statement that holds B and its value

Layer 1's head 0 is built (`offset_head`: a RoPE construction that reads exactly five tokens
back) and its q/k stay as built; the embeddings and layer 0 are the needle model's and are not
trained. Everything else is trained with the answer loss plus an attention loss that names, for every
question and every copy statement, the position its lookup layer should read (`annotate`):
without it, the new layers did not find the statements in 400 steps (see TRAINING.md).
A warm-up on short statement-only sequences (`recall_batch`) precedes a length curriculum on
the real tasks. Seeded; saves the model, the tokenizer and TRAINING_RUN.md (command, wall time,
dense accuracy) into --out.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from longctx.eval import is_correct, make_sample, vocab  # noqa: E402
from train_needle_model import greedy, pad_batch  # noqa: E402

KEYS = frozenset(vocab.KEYS)
TASK_MIX = {"variable_tracking": 0.5, "niah_multikey": 0.3, "niah_single": 0.2}
DEFINITION = re.compile(r"The value of (\w+) is (\d+)\.")
COPY = re.compile(r"The value of (\w+) is the value of (\w+)\.")


def parse_args(argv=None):
    """Command-line options; the defaults are the shipped recipe."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", default="examples/models/needle-llama", help="the trained needle model to grow")
    p.add_argument("--out", default="examples/models/vt-llama")
    p.add_argument("--hops", type=int, default=1, help="copies per chain the model is built and trained for")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--recall-steps", type=int, default=400)
    p.add_argument("--recall-batch", type=int, default=32)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--steps", type=int, nargs="+", default=[200, 150, 150, 100, 240], help="steps per length")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 5e-4, 5e-4, 5e-4, 3e-4],
                   help="learning rate per length (the warm-up uses the first)")
    p.add_argument("--tokens-per-step", type=int, default=4096)
    p.add_argument("--attention-weight", type=float, default=1.0, help="weight of the attention loss")
    p.add_argument("--head-scale", type=float, default=12.0, help="scale of layer 1's built head (`offset_head`)")
    p.add_argument("--head-offset", type=int, default=5,
                   help="how far back layer 1's built head reads (5: from a copy's '.' to its 'is')")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-samples", type=int, default=20)
    p.add_argument("--final-eval-samples", type=int, default=50)
    p.add_argument("--final-eval-lengths", type=int, nargs="*", default=[2048, 4096])
    args = p.parse_args(argv)
    if not len(args.lengths) == len(args.steps) == len(args.lrs):
        p.error("--lengths, --steps and --lrs need one value per stage")
    if args.hops < 1:
        p.error("--hops must be at least 1")
    return args


def offset_head(attn, scale, inv_freq, offset):
    """Make head 0 of `attn` (and the k of its KV group) attend the token exactly `offset`
    positions back, whatever it is.

    q and k are biases only (their weights are zero): q is `scale` on the first entry of every
    RoPE pair (j, j + head_dim/2), k is `scale` rotated by `offset` positions' worth of the pair's
    frequency (cos on j, sin on j + head_dim/2). After RoPE the score at distance d is
    scale**2 / sqrt(head_dim) * sum_j cos((d - offset) * inv_freq_j), which every pair makes
    largest at d = offset; the runner-up is d = offset +- 1 (for needle-llama's rope_theta
    100000 and head_dim 32: 15.39 of 16), so scale 12 leaves that neighbour ~16 logits behind.
    A copy statement's "is" is always five tokens before its ".", hence offset 5.
    """
    half = inv_freq.numel()
    head_dim = 2 * half
    angle = offset * inv_freq.float()
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj):
            proj.weight[:head_dim] = 0
        attn.q_proj.bias[:head_dim] = torch.cat([torch.full((half,), float(scale)), torch.zeros(half)])
        attn.k_proj.bias[:head_dim] = scale * torch.cat([torch.cos(angle), torch.sin(angle)])


def grow(args):
    """The needle model at `args.init` grown to 3 + hops layers (see the module docstring);
    eager attention (the attention loss reads the weights)."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    needle = AutoModelForCausalLM.from_pretrained(args.init, dtype=torch.float32)
    if needle.config.num_hidden_layers != 2:
        raise SystemExit(f"--init: expected the 2-layer needle model, got {needle.config.num_hidden_layers} layers")
    config = needle.config
    config.num_hidden_layers = 3 + args.hops
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config)
    places = {0: [0], 1: list(range(2, 3 + args.hops))}  # needle layer -> grown layers
    state = {}
    for key, value in needle.state_dict().items():
        if key.startswith("model.layers."):
            parts = key.split(".")
            for place in places[int(parts[2])]:
                state[".".join([*parts[:2], str(place), *parts[3:]])] = value.clone()
        else:
            state[key] = value
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith("model.layers.1.") for key in missing):
        raise SystemExit(f"--init does not fit: unexpected {unexpected[:3]}, missing {missing[:3]}")
    head_dim = config.head_dim
    layer = model.model.layers[1]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.mul_(0.1)
        layer.self_attn.o_proj.weight[:, head_dim:] = 0  # only head 0 writes at first
        layer.mlp.down_proj.weight.zero_()
        model.model.layers[-1].self_attn.o_proj.weight.mul_(0.5)
    offset_head(layer.self_attn, args.head_scale, model.model.rotary_emb.inv_freq, args.head_offset)
    for param in (*model.model.embed_tokens.parameters(), *model.model.layers[0].parameters()):
        param.requires_grad_(False)  # the needle model's parts that its lookup layer reads as they are
    return model


def annotate(tokens, hops):
    """{layer: [(query position, key position)]}: where each layer's lookup should read.

    Finds (lower-case word tokens) definitions "the value of K is V .", copies "the value of K
    is the value of S ." and questions "answer : the value of K is". A copy whose source is
    defined directly resolves in layer 2 (its "." reads the value token), a copy of a copy at
    hop h in layer 1 + h (reading the earlier copy's "."); a question, in the last layer, reads
    its variable's carrier: the value token, or its copy's ".". Layer 1 is not named: its built
    head reads a fixed offset (`offset_head`).
    """
    carrier, hop, copies, questions = {}, {}, [], []
    for j in range(len(tokens) - 6):
        if tokens[j:j + 3] != ["the", "value", "of"] or tokens[j + 3] not in KEYS or tokens[j + 4] != "is":
            if tokens[j:j + 5] == ["answer", ":", "the", "value", "of"] and tokens[j + 6:j + 7] == ["is"]:
                questions.append((j + 6, tokens[j + 5]))
            continue
        key = tokens[j + 3]
        if tokens[j + 5].isdigit() and tokens[j + 6] == ".":
            carrier[key] = j + 5
            hop[key] = 0
        elif tokens[j + 5:j + 8] == ["the", "value", "of"] and tokens[j + 8:j + 9] and tokens[j + 8] in KEYS \
                and tokens[j + 9:j + 10] == ["."]:
            source = tokens[j + 8]
            if source in carrier:
                hop[key] = hop[source] + 1
                copies.append((j + 9, carrier[source], hop[key]))
                carrier[key] = j + 9
    pairs = {layer: [] for layer in range(2, 3 + hops)}
    for dot, read, level in copies:
        if level <= hops:
            pairs[1 + level].append((dot, read))
    pairs[2 + hops] += [(position, carrier[key]) for position, key in questions if hop.get(key, hops + 1) <= hops]
    return pairs


def chain_answers(document):
    """[(variable, value)] of every variable of a variable_tracking document, in random order."""
    values = dict(DEFINITION.findall(document))
    for key, source in COPY.findall(document):
        if source in values:
            values[key] = values[source]
    answers = list(values.items())
    random.shuffle(answers)
    return answers


def question_ids(tok, key, answer, newline):
    """(question ids, answer ids) of one variable_tracking question."""
    question = tok(("\n" if newline else " ") + vocab.Q_VT.format(key=key), add_special_tokens=False)["input_ids"]
    return question, tok(" " + answer, add_special_tokens=False)["input_ids"]


def recall_batch(tok, rng, batch, hops, chains=(2, 4)):
    """Statement-only rows: 2-4 chains (definitions, then each hop's copies, each group
    shuffled), then twice as many questions, 70 % about a chain's last variable."""
    seqs, labs = [], []
    for _ in range(batch):
        count = rng.randint(*chains)
        names = rng.sample(vocab.KEYS, count * (hops + 1))
        values = rng.sample(range(vocab.VALUE_MIN, vocab.VALUE_MAX + 1), count)
        groups, answers = [[] for _ in range(hops + 1)], {}
        for chain in range(count):
            keys = names[chain * (hops + 1):(chain + 1) * (hops + 1)]
            groups[0].append(vocab.VT_VALUE.format(key=keys[0], value=values[chain]))
            for h in range(hops):
                groups[h + 1].append(vocab.VT_COPY.format(key=keys[h + 1], source=keys[h]))
            answers.update({key: str(values[chain]) for key in keys})
        statements = []
        for group in groups:
            rng.shuffle(group)
            statements += group
        seq = tok(" ".join(statements))["input_ids"]
        lab = [-100] * len(seq)
        for _ in range(2 * count):
            key = rng.choice(names[hops::hops + 1] if rng.random() < 0.7 else names)
            question, answer = question_ids(tok, key, answers[key], newline=False)
            seq, lab = seq + question + answer, lab + [-100] * len(question) + answer
        seqs.append(seq)
        labs.append(lab)
    return pad_batch(tok, seqs, labs)


def task_batch(tok, rng, length, batch, seed, step, hops):
    """Rows of the real tasks (TASK_MIX) at [max(L/2, 224), L] tokens; a variable_tracking row
    also asks about every other variable of its document (answers followed by </s>)."""
    seqs, labs = [], []
    for index in range(batch):
        task = rng.choices(list(TASK_MIX), list(TASK_MIX.values()))[0]
        low = max(length // 2, 224)
        settings = ({"num_hops": hops} if task == "variable_tracking" else
                    {"num_distractors": rng.randint(1, 6)} if task == "niah_multikey" else {})
        sample = make_sample(task, rng.randint(low, max(low, length)), seed=seed * 1_000_003 + step, index=index,
                             **settings)
        prompt = tok(sample.prompt)["input_ids"]
        answer = tok(" " + sample.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seq, lab = prompt + answer, [-100] * len(prompt) + answer
        if task == "variable_tracking":
            for key, value in chain_answers(sample.document):
                question, answer = question_ids(tok, key, value, newline=True)
                answer = answer + [tok.eos_token_id]
                seq, lab = seq + question + answer, lab + [-100] * len(question) + answer
        seqs.append(seq)
        labs.append(lab)
    return pad_batch(tok, seqs, labs)


def training_loss(model, tok, ids, labels, hops, attention_weight):
    """Cross-entropy on the answer tokens, plus `attention_weight` times the mean negative log
    attention weight, over every head of a lookup layer, on the position `annotate` names."""
    out = model.model(input_ids=ids, use_cache=False, output_attentions=True)
    hidden, target = out.last_hidden_state[:, :-1], labels[:, 1:]
    answered = target != -100
    loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[answered]).float(), target[answered])
    terms = []
    for row in range(ids.shape[0]):
        for layer, pairs in annotate(tok.convert_ids_to_tokens(ids[row]), hops).items():
            for query, key in pairs:
                terms.append(-torch.log(out.attentions[layer][row, :, query, key] + 1e-6).mean())
    if terms and attention_weight:
        loss = loss + attention_weight * torch.stack(terms).mean()
    return loss


def evaluate(model, tok, length, samples, seed, hops):
    """{task: greedy accuracy} over TASK_MIX's tasks, `samples` each, at `length` tokens."""
    model.eval()
    accuracy = {}
    for task in TASK_MIX:
        settings = {"num_hops": hops} if task == "variable_tracking" else {}
        right = 0
        for index in range(samples):
            sample = make_sample(task, length, seed, index, **settings)
            right += is_correct(greedy(model, tok, sample.prompt, 4), sample)
        accuracy[task] = right / samples
    model.train()
    return accuracy


def write_record(path, argv, args, wall, final):
    """TRAINING_RUN.md: the command, the wall time and the final dense accuracy."""
    lines = ["# vt-llama: record of one training run", "",
             "Command of this run:", "", "```",
             "python examples/train_vt_model.py " + " ".join(argv), "```", "",
             f"- wall time: {wall / 60:.1f} min on {args.threads} CPU threads", "",
             f"Dense greedy accuracy at the end ({args.final_eval_samples} samples, seed 1234; "
             f"variable_tracking with {args.hops} hop(s)):", "",
             "| task | length | accuracy |", "|---|---|---|"]
    lines += [f"| {task} | {length} | {value:.0%} |" for (task, length), value in final.items()]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def main(argv=None):
    """Grow, train, save; prints progress and the final dense accuracy."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.init)
    model = grow(args)
    built = model.model.layers[1].self_attn
    head_dim = model.config.head_dim
    built_rows = [(param, param.detach()[:head_dim].clone())
                  for param in (*built.q_proj.parameters(), *built.k_proj.parameters())]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lrs[0],
                                  betas=(0.9, 0.98), weight_decay=0.1)
    rng = random.Random(f"vt/{args.seed}")
    stages = [(0, args.recall_steps, args.lrs[0])] + list(zip(args.lengths, args.steps, args.lrs))
    started, step, smooth = time.time(), 0, None
    for length, steps, lr in stages:
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = max(1, args.tokens_per_step // length) if length else args.recall_batch
        print(f"== stage {length or 'recall'}: {steps} steps, batch {batch}, lr {lr:g}", flush=True)
        for _ in range(steps):
            ids, labels = (task_batch(tok, rng, length, batch, args.seed, step, args.hops) if length
                           else recall_batch(tok, rng, batch, args.hops))
            loss = training_loss(model, tok, ids, labels, args.hops, args.attention_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            with torch.no_grad():  # the built head keeps its q/k exactly (no update, no weight decay)
                for param, rows in built_rows:
                    param[:head_dim] = rows
            step += 1
            smooth = loss.item() if smooth is None else 0.9 * smooth + 0.1 * loss.item()
            if step % 20 == 0:
                print(f"step {step} loss {smooth:.3f} t {(time.time() - started) / 60:.1f}m", flush=True)
            if step % args.eval_every == 0:
                accuracy = evaluate(model, tok, length or args.lengths[0], args.eval_samples, 999, args.hops)
                print(f"eval step {step}: " + " ".join(f"{k}={v:.2f}" for k, v in accuracy.items()), flush=True)
    wall = time.time() - started
    model.config._attn_implementation = "sdpa"
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    final = {}
    for length in args.final_eval_lengths:
        for task, value in evaluate(model, tok, length, args.final_eval_samples, 1234, args.hops).items():
            final[(task, length)] = value
            print(f"final {task} {length}: {value:.2f}", flush=True)
    write_record(os.path.join(args.out, "TRAINING_RUN.md"), argv, args, wall, final)
    print(f"done in {wall / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
