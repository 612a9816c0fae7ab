"""Train vn-qwen-vl: a tiny Qwen2.5-VL that answers the video needle tasks of longctx.eval.video_needles.

    python examples/train_video_model.py --out examples/models/vn-qwen-vl

A real Hugging Face `Qwen2_5_VLForConditionalGeneration` (vision tower + language model, M-RoPE),
built from its config and trained from scratch here on `video_retrieval`, `video_ordering` and
`video_counting` (28 x 28 frames: one language-model token per frame pair, so a 4,096-token
prompt is a clip of about 8,000 frames). Two stages:

1. **vision**: the vision tower (patch embedding, two blocks, merger) learns to see needles on
   single frame pairs: a linear probe on its output (dropped afterwards) predicts whether a
   needle shows in the pair, its colour and its symbol. The tower is then frozen.
2. **language model**, on whole clips, a length curriculum up to `--lengths[-1]` tokens, with
   the answer loss plus an attention loss that names what four of its heads read
   (`attention_targets`):

       layer 0, head 0    every token: the BOS and every needle token up to itself, evenly
                          (a running needle summary: how many needles so far, which colours)
       layer 0, heads 2-3 built, q/k kept (`offset_heads`): the tokens 3 and 5 back, which at
                          the answer prefix are the question's words that say what is asked
                          (and the two colours of an ordering question)
       layer 1, head 0    the answer prefix: every needle token (what was shown)
       layer 1, head 1    the answer prefix: BOS and every needle token, evenly (how many)
       layer 1, heads 2-3 the answer prefix of an ordering question: the needles of the first
                          / the second colour it names (whose summary says which came first)

   The rest (values, outputs, MLPs, the third layer, embeddings) learn from the answer loss.
   Positions follow the installed transformers' `get_rope_index`; half of the training clips
   place the question after the video's last temporal position instead (the rule of the
   transformers releases before 5.x's), so the model does not depend on which one runs it.

Seeded; saves the model, tokenizer, processor config and TRAINING_RUN.md (command, wall time,
dense accuracy through transformers' own forward) into --out. TRAINING.md there says why it
is built this way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from longctx.eval.video_needles import (  # noqa: E402
    COLOURS, SYMBOLS, VIDEO_TASKS, Needle, draw_needle, haystack, make_video_sample, video_words)
from longctx.eval.tokenizer import SPECIALS, build_tokenizers_object  # noqa: E402
from longctx.families.qwen2_5_vl import VISION_TOKENS, _mrope_section, patchify  # noqa: E402

FRAME = 28
PROCESSOR = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": FRAME * FRAME,
             "max_pixels": FRAME * FRAME, "image_mean": [0.48145466, 0.4578275, 0.40821073],
             "image_std": [0.26862954, 0.26130258, 0.27577711]}
COLOUR_NAMES, PROBE = list(COLOURS), 1 + len(COLOURS) + len(SYMBOLS)
TASK_MIX = {"video_retrieval": 0.25, "video_ordering": 0.35, "video_counting": 0.4}
OFFSETS = (3, 5)  # what layer 0's heads 2 and 3 read, tokens back


def parse_args(argv=None):
    """Command-line options; the defaults are the shipped recipe."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="examples/models/vn-qwen-vl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--intermediate", type=int, default=384)
    p.add_argument("--vision-hidden", type=int, default=128)
    p.add_argument("--vision-steps", type=int, default=2000)
    p.add_argument("--vision-batch", type=int, default=256, help="frame pairs per vision step")
    p.add_argument("--vision-lr", type=float, default=2e-3)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096])
    p.add_argument("--steps", type=int, nargs="+", default=[400, 300, 200, 150, 200, 300], help="steps per length")
    p.add_argument("--lrs", type=float, nargs="+", default=[2e-3, 1e-3, 1e-3, 5e-4, 5e-4, 3e-4])
    p.add_argument("--tokens-per-step", type=int, default=4096)
    p.add_argument("--attention-weight", type=float, default=1.0)
    p.add_argument("--head-scale", type=float, default=12.0, help="scale of the built offset heads")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-samples", type=int, default=12)
    p.add_argument("--final-eval-samples", type=int, default=50)
    p.add_argument("--final-eval-lengths", type=int, nargs="*", default=[2048, 4096])
    p.add_argument("--ckpt", default="/tmp/vn_qwen_vl.pt")
    p.add_argument("--resume", action="store_true", help="continue from --ckpt (after its vision stage)")
    args = p.parse_args(argv)
    if not len(args.lengths) == len(args.steps) == len(args.lrs):
        p.error("--lengths, --steps and --lrs need one value per stage")
    return args


# --------------------------------------------------------------------------- model

def build_tokenizer():
    """The word-level tokenizer of the video questions with Qwen2.5-VL's vision tokens."""
    from transformers import PreTrainedTokenizerFast

    words = video_words() + list(VISION_TOKENS)
    tokenizer_object = build_tokenizers_object(words)
    tokenizer_object.add_special_tokens(list(VISION_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, bos_token=SPECIALS[2], eos_token=SPECIALS[3],
                                   unk_token=SPECIALS[1], pad_token=SPECIALS[0], model_max_length=1 << 20,
                                   clean_up_tokenization_spaces=False)


def build_model(args, tok):
    """A fresh Qwen2_5_VLForConditionalGeneration (fp32) of the script's sizes."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {token: tok.convert_tokens_to_ids(token) for token in VISION_TOKENS}
    special = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    heads = 4
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=2,
                         max_position_embeddings=32768, use_sliding_window=False, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": _mrope_section(args.hidden // heads)},
                         tie_word_embeddings=False, **special),
        vision_config=dict(depth=2, hidden_size=args.vision_hidden, intermediate_size=2 * args.vision_hidden,
                           num_heads=2, out_hidden_size=args.hidden, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1], tokens_per_second=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False, **special)
    torch.manual_seed(args.seed)
    return Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)


def offset_heads(attn, scale, inv_freq, offsets=OFFSETS):
    """Make heads 2 and 3 of `attn` (the second KV group) read exactly offsets[0] / offsets[1]
    tokens back, whatever the tokens are.

    q and k are biases only (weights zero). The group's shared k is `scale` on the first entry
    of every RoPE pair; head h's q is `scale` rotated back by offsets[h-2] positions' worth of
    each pair's frequency (cos on j, sin on j + head_dim/2). After RoPE the score at distance d
    is scale**2 / sqrt(head_dim) * sum_j cos((d - offset) * inv_freq_j): largest at d = offset
    between text tokens, whose three M-RoPE axes are equal (the question's words).
    """
    half = inv_freq.numel()
    head_dim = 2 * half
    with torch.no_grad():
        attn.q_proj.weight[2 * head_dim:] = 0
        attn.k_proj.weight[head_dim:] = 0
        attn.k_proj.bias[head_dim:] = torch.cat([torch.full((half,), float(scale)), torch.zeros(half)])
        for head, offset in zip((2, 3), offsets):
            angle = -offset * inv_freq.float()
            attn.q_proj.bias[head * head_dim:(head + 1) * head_dim] = scale * torch.cat([torch.cos(angle),
                                                                                         torch.sin(angle)])


def frozen_rows(attn, head_dim):
    """(parameter, rows, kept values) of the built offset heads' q/k rows (kept as built)."""
    rows = []
    for proj, part in ((attn.q_proj, slice(2 * head_dim, 4 * head_dim)), (attn.k_proj, slice(head_dim, 2 * head_dim))):
        for param in proj.parameters():
            rows.append((param, part, param.detach()[part].clone()))
    return rows


def content_pairs(language, longest):
    """RoPE pair indices a position-free lookup may use: {layer 0: the height / width sections
    (video tokens share those positions, so video-to-video scores do not depend on time), layer
    1: the pairs that turn less than 0.6 radians over `longest` positions (a question reading the
    video scores it alike wherever the text after a video is placed)}."""
    inv_freq = language.rotary_emb.inv_freq
    temporal = language.config.rope_parameters["mrope_section"][0]
    return {0: [j for j in range(inv_freq.numel()) if j >= temporal],
            1: [j for j in range(inv_freq.numel()) if inv_freq[j] * longest <= 0.6]}


def content_rows(language, longest):
    """(parameter, rows, zeros) that keep the supervised lookups position-free: every q/k row
    of layer 1 and of layer 0's first KV group outside `content_pairs` stays zero."""
    config = language.config
    head_dim = config.hidden_size // config.num_attention_heads
    half = head_dim // 2
    per_group = config.num_attention_heads // config.num_key_value_heads
    rows = []
    for layer, pairs in content_pairs(language, longest).items():
        attn = language.layers[layer].self_attn
        kept = set(pairs) | {j + half for j in pairs}
        outside = [d for d in range(head_dim) if d not in kept]
        groups = range(config.num_key_value_heads) if layer == 1 else range(1)
        for proj, heads in ((attn.k_proj, list(groups)), (attn.q_proj, [h for g in groups for h in
                                                                          range(g * per_group, (g + 1) * per_group)])):
            index = torch.tensor([head * head_dim + d for head in heads for d in outside])
            for param in proj.parameters():
                with torch.no_grad():
                    param[index] = 0
                rows.append((param, index, torch.zeros_like(param.detach()[index])))
    return rows


# --------------------------------------------------------------------------- stage 1: vision

def pair_batch(rng, batch):
    """(frames [2*batch, 28, 28, 3] uint8, labels [batch, 3] long): frame pairs of a muted scene,
    40 % plain, 30 % with a needle on both frames, 30 % on one of them; labels are (needle 0/1,
    colour index, symbol index), -1 where no needle shows."""
    frames = haystack(rng, 2 * batch, FRAME)
    labels = np.full((batch, 3), -1, np.int64)
    labels[:, 0] = 0
    for pair in range(batch):
        kind = rng.random()
        if kind < 0.4:
            continue
        colour, symbol = rng.randrange(len(COLOURS)), rng.randrange(len(SYMBOLS))
        start, length = (2 * pair, 2) if kind < 0.7 else (2 * pair + rng.randrange(2), 1)
        draw_needle(rng, frames, Needle(start, COLOUR_NAMES[colour], SYMBOLS[symbol]), length)
        labels[pair] = (1, colour, symbol)
    return frames, torch.from_numpy(labels)


def encode_pairs(visual, frames):
    """The vision tower's output [pairs, hidden] for frames [2*pairs, 28, 28, 3] (each pair one
    temporal patch, encoded independently: the tower attends within one frame pair)."""
    pixels, grid = patchify(frames, PROCESSOR)
    output = visual(torch.from_numpy(pixels), grid_thw=torch.tensor([grid]))
    return getattr(output, "pooler_output", output)


def probe_loss(logits, labels):
    """(loss, accuracy of (needle, colour, symbol)) of the probe's logits [pairs, PROBE]."""
    needle = labels[:, 0] == 1
    loss = F.binary_cross_entropy_with_logits(logits[:, 0], labels[:, 0].float())
    colour, symbol = logits[needle, 1:1 + len(COLOURS)], logits[needle, 1 + len(COLOURS):]
    loss = loss + F.cross_entropy(colour, labels[needle, 1]) + F.cross_entropy(symbol, labels[needle, 2])
    right = ((logits[:, 0] > 0) == needle).float().mean().item(), \
        (colour.argmax(-1) == labels[needle, 1]).float().mean().item(), \
        (symbol.argmax(-1) == labels[needle, 2]).float().mean().item()
    return loss, right


def train_vision(model, args, rng):
    """Stage 1 (module docstring); freezes the tower afterwards."""
    visual = model.model.visual
    probe = torch.nn.Linear(args.hidden, PROBE)
    optimizer = torch.optim.AdamW([*visual.parameters(), *probe.parameters()], lr=args.vision_lr, weight_decay=0.01)
    started = time.time()
    for step in range(1, args.vision_steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = args.vision_lr * min(1.0, step / 50) * (0.1 + 0.9 * (1 - step / args.vision_steps))
        frames, labels = pair_batch(rng, args.vision_batch)
        loss, right = probe_loss(probe(encode_pairs(visual, frames)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            print(f"vision step {step} loss {loss.item():.3f} needle/colour/symbol "
                  f"{right[0]:.2f}/{right[1]:.2f}/{right[2]:.2f} t {(time.time() - started) / 60:.1f}m", flush=True)
    with torch.no_grad():
        frames, labels = pair_batch(random.Random("vision-eval"), 1024)
        _, right = probe_loss(probe(encode_pairs(visual, frames)), labels)
    visual.requires_grad_(False)
    return right


# --------------------------------------------------------------------------- stage 2: language model

def capture_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """HF attention function: causal SDPA, and the post-RoPE q/k of the layer kept in
    kwargs["capture"] (a dict: layer -> (q, k)) for the attention loss."""
    store = kwargs.get("capture")
    if store is not None:
        store[module.layer_idx] = (query, key)
    out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def register_capture():
    """Register `capture_attention` with transformers under the name returned."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register("vn_capture", capture_attention)
    AttentionMaskInterface.register("vn_capture", lambda *args, **kwargs: None)
    return "vn_capture"


def needle_tokens(sample, event_frames=3):
    """{needle index: [sequence rows]} of the frame pairs each needle shows in (row 2 + pair:
    after BOS and <|vision_start|>)."""
    return {index: list(range(2 + needle.start // 2, 2 + (needle.start + event_frames - 1) // 2 + 1))
            for index, needle in enumerate(sample.needles)}


def attention_targets(sample, rng, extra_rows=24):
    """[(layer, head, row, [key rows])]: where the supervised heads should read, evenly (see the
    module docstring). Rows are sequence positions of the prompt (the answer prefix is its last)."""
    owned = needle_tokens(sample)
    needles = sorted(row for rows in owned.values() for row in rows)
    final = sample.length - 1
    first_video, last_video = 2, 2 + (len(sample.frames) // 2) - 1
    rows = set(needles) | set(range(last_video + 2, final + 1))
    rows |= {rng.randint(first_video, last_video) for _ in range(extra_rows)}
    targets = [(0, 0, row, [0] + [key for key in needles if key <= row]) for row in sorted(rows)]
    targets += [(1, 0, final, needles), (1, 1, final, [0] + needles)]
    if sample.task == "video_ordering":
        words = sample.question.split()
        named = [words[5], words[7]]  # "which colour came first , A or B ? answer :"
        for head, colour in zip((2, 3), named):
            index = next(i for i, needle in enumerate(sample.needles) if needle.colour == colour)
            targets.append((1, head, final, owned[index]))
    return targets


def attention_loss(store, targets_per_row, scale):
    """{(layer, head): mean KL divergence from its supervised rows' even targets to their
    attention} (`attention_targets` of each batch row; 0 when a row attends exactly its target)."""
    terms = {}
    for batch_row, targets in enumerate(targets_per_row):
        for layer, head, row, keys in targets:
            query, key = store[layer]
            q = query[batch_row, head, row]
            k = key[batch_row, head * key.shape[1] // query.shape[1], : row + 1]
            logp = torch.log_softmax((k @ q) * scale, dim=0)
            terms.setdefault((layer, head), []).append(-logp[keys].mean() - math.log(len(keys)))
    return {name: torch.stack(values).mean() for name, values in terms.items()}


def prompt_positions(model, ids, is_video, grid, seconds, after_video):
    """M-RoPE position ids [3, 1, S] from the model's own get_rope_index; with `after_video` the
    text after the video starts one past the video's largest position (the older rule)."""
    table, _ = model.model.get_rope_index(ids[None], mm_token_type_ids=(2 * is_video.int())[None],
                                          video_grid_thw=torch.tensor([grid]),
                                          second_per_grid_ts=torch.tensor([seconds]))
    if after_video:
        end = int(is_video.nonzero().max()) + 1
        shift = table[:, 0, :end].max() + 1 - table[0, 0, end]
        table[:, :, end:] += shift
    return table


def clip_batch(model, tok, samples, rng):
    """(inputs_embeds [B, S, d], position_ids [3, B, S], labels [B, S]) of prompt + answer + </s>
    for samples of equal prompt length; vision embeddings by the frozen tower."""
    from longctx.families.qwen2_5_vl import video_prompt

    embed = model.get_input_embeddings()
    rows, positions, labels = [], [], []
    with torch.no_grad():
        vision = encode_pairs(model.model.visual, np.concatenate([sample.frames for sample in samples]))
    offset = 0
    for sample in samples:
        pairs = len(sample.frames) // 2
        grid = (pairs, FRAME // 14, FRAME // 14)
        doc, query = video_prompt(tok, grid, sample.question)
        answer = tok(sample.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor(doc + query + answer)
        is_video = ids == model.config.video_token_id
        row = embed(ids).clone()
        row[is_video] = vision[offset:offset + pairs]
        offset += pairs
        fps = rng.choice((1.0, 2.0))
        positions.append(prompt_positions(model, ids, is_video, grid, 2.0 / fps, rng.random() < 0.5))
        label = torch.full_like(ids, -100)
        label[len(doc) + len(query) - 1:-1] = ids[len(doc) + len(query):]
        rows.append(row)
        labels.append(label)
    return torch.stack(rows), torch.cat(positions, dim=1), torch.stack(labels)


def task_samples(rng, length, batch, seed, step):
    """`batch` training samples of one task each (TASK_MIX) at one random length in [L/2, L]."""
    total = rng.randint(max(length // 2, 64), length)
    tasks = rng.choices(list(TASK_MIX), list(TASK_MIX.values()), k=batch)
    return [make_video_sample(task, total, seed=1_000_003 * seed + step, index=index) for index, task in enumerate(tasks)]


def training_loss(model, tok, samples, rng, attention_weight):
    """(answer loss + attention_weight * the supervised heads' mean attention loss, {part: value})
    of one batch; the parts are the answer loss and each supervised head's attention loss."""
    embeds, positions, labels = clip_batch(model, tok, samples, rng)
    store = {}
    out = model.model.language_model(inputs_embeds=embeds, position_ids=positions, use_cache=False, capture=store)
    answered = labels != -100  # labels sit at the positions that predict them
    losses = F.cross_entropy(model.lm_head(out.last_hidden_state[answered]), labels[answered], reduction="none")
    answer_loss = losses.mean()
    rows = answered.nonzero()[:, 0]
    text = model.config.text_config
    scale = (text.hidden_size // text.num_attention_heads) ** -0.5
    heads = attention_loss(store, [attention_targets(sample, rng) for sample in samples], scale)
    parts = {"answer": answer_loss.item(), **{f"L{layer}H{head}": value.item() for (layer, head), value in heads.items()}}
    for task in VIDEO_TASKS:
        mine = torch.tensor([samples[row].task == task for row in rows.tolist()])
        if mine.any():
            parts[task.split("_")[1][:5]] = losses[mine].mean().item()
    return answer_loss + attention_weight * torch.stack(list(heads.values())).mean(), parts


def answer_of(model, tok, sample, rng=None):
    """The model's greedy answer word to `sample` through the training path (one forward)."""
    embeds, positions, _ = clip_batch(model, tok, [sample], rng or random.Random(0))
    with torch.no_grad():
        out = model.model.language_model(inputs_embeds=embeds[:, :sample.length],
                                         position_ids=positions[:, :, :sample.length], use_cache=False)
        token = model.lm_head(out.last_hidden_state[0, -1]).argmax().item()
    return tok.convert_ids_to_tokens(token)


def evaluate(model, tok, length, samples, seed, answer=answer_of):
    """{task: accuracy} of `answer(model, tok, sample)` on `samples` seeded samples per task at `length`."""
    model.eval()
    accuracy = {}
    for task in VIDEO_TASKS:
        right = 0
        for index in range(samples):
            sample = make_video_sample(task, length, seed, index)
            right += answer(model, tok, sample) == sample.answer
        accuracy[task] = right / samples
    model.train()
    return accuracy


def hf_answer(model, tok, sample, model_dir):
    """The greedy answer word of transformers' own forward (`pixel_values_videos`, its own
    M-RoPE positions) on the sample's clip processed by the family adapter's `load_video`."""
    from longctx.families.qwen2_5_vl import load_video, video_prompt

    video = load_video(sample.frames, model_dir, source_fps=sample.fps)
    doc, query = video_prompt(tok, video.grid, sample.question)
    ids = torch.tensor([doc + query])
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values_videos=torch.from_numpy(video.pixels),
                       video_grid_thw=torch.tensor([video.grid]),
                       second_per_grid_ts=torch.tensor([video.seconds_per_patch]),
                       mm_token_type_ids=2 * (ids == model.config.video_token_id).int(), use_cache=False).logits
    return tok.convert_ids_to_tokens(logits[0, -1].argmax().item())


def save(model, tok, out):
    """Model (sdpa), tokenizer and the processor config the family adapter reads."""
    model.config._attn_implementation = "sdpa"
    model.config.text_config._attn_implementation = "sdpa"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    with open(os.path.join(out, "preprocessor_config.json"), "w") as handle:
        json.dump(PROCESSOR, handle, indent=1)


def write_record(path, argv, args, wall, vision, final):
    """TRAINING_RUN.md: the command, the wall time, the vision probe and the final dense accuracy."""
    lines = ["# vn-qwen-vl: record of one training run", "", "Command of this run:", "", "```",
             "python examples/train_video_model.py " + " ".join(argv), "```", "",
             f"- wall time: {wall / 60:.1f} min on {args.threads} CPU thread(s)",
             f"- vision probe after stage 1 (1,024 held-out frame pairs): needle {vision[0]:.1%}, "
             f"colour {vision[1]:.1%}, symbol {vision[2]:.1%}", "",
             f"Dense greedy accuracy at the end (transformers' own forward, {args.final_eval_samples} samples per "
             "task, seed 1234):", "", "| task | length | accuracy |", "|---|---|---|"]
    lines += [f"| {task} | {length} | {value:.0%} |" for (task, length), value in final.items()]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def main(argv=None):
    """Build, train both stages, save, evaluate; prints progress."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = build_tokenizer()
    model = build_model(args, tok)
    model.config.text_config._attn_implementation = register_capture()
    language = model.model.language_model
    head_dim = args.hidden // language.config.num_attention_heads
    offset_heads(language.layers[0].self_attn, args.head_scale, language.rotary_emb.inv_freq)
    kept = frozen_rows(language.layers[0].self_attn, head_dim) + content_rows(language, 4 * max(args.lengths))
    rng = random.Random(f"vn/{args.seed}")
    started = time.time()
    if args.resume:
        state = torch.load(args.ckpt)
        model.load_state_dict(state["model"])
        vision, first_stage = state["vision"], state["stage"]
        model.model.visual.requires_grad_(False)
    else:
        vision, first_stage = train_vision(model, args, rng), 0
        print(f"vision probe: needle {vision[0]:.3f} colour {vision[1]:.3f} symbol {vision[2]:.3f}", flush=True)
        torch.save({"model": model.state_dict(), "vision": vision, "stage": 0}, args.ckpt)
    trained = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=args.lrs[0], betas=(0.9, 0.98), weight_decay=0.01)
    step = sum(args.steps[:first_stage])
    for stage in range(first_stage, len(args.lengths)):
        length, steps, lr = args.lengths[stage], args.steps[stage], args.lrs[stage]
        batch = max(1, args.tokens_per_step // length)
        print(f"== stage {length}: {steps} steps, batch {batch}, lr {lr:g}", flush=True)
        smooth = None
        for index in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (index + 1) / 20)
            samples = task_samples(rng, length, batch, args.seed, step)
            loss, parts = training_loss(model, tok, samples, rng, args.attention_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            with torch.no_grad():
                for param, rows, copy in kept:
                    param[rows] = copy
            step += 1
            parts["loss"] = loss.item()
            smooth = parts if smooth is None else {k: 0.9 * smooth.get(k, v) + 0.1 * v for k, v in parts.items()}
            if step % 20 == 0:
                print(f"step {step} " + " ".join(f"{k} {v:.3f}" for k, v in sorted(smooth.items()))
                      + f" t {(time.time() - started) / 60:.1f}m", flush=True)
            if step % args.eval_every == 0:
                accuracy = evaluate(model, tok, length, args.eval_samples, 999)
                print(f"eval step {step} ({length}): " + " ".join(f"{k}={v:.2f}" for k, v in accuracy.items()),
                      flush=True)
        torch.save({"model": model.state_dict(), "vision": vision, "stage": stage + 1}, args.ckpt)
    wall = time.time() - started
    save(model, tok, args.out)
    from transformers import Qwen2_5_VLForConditionalGeneration

    saved = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.out, dtype=torch.float32).eval()
    final = {}
    for length in args.final_eval_lengths:
        accuracy = evaluate(saved, tok, length, args.final_eval_samples, 1234,
                            answer=lambda m, t, s: hf_answer(m, t, s, args.out))
        for task, value in accuracy.items():
            final[(task, length)] = value
            print(f"final {task} {length}: {value:.2f}", flush=True)
    write_record(os.path.join(args.out, "TRAINING_RUN.md"), argv, args, wall, vision, final)
    print(f"done in {wall / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
