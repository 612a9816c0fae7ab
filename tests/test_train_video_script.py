"""The video model's training script (examples/train_video_model.py): where its attention loss
points, the built offset heads and position-free lookups through transformers' own M-RoPE, the
vision stage's labels and the two position rules (no training). About 10 s."""

import importlib.util
import math
import os
import random
import sys

import numpy as np
import pytest
import torch

from helpers import REPO
from longctx.eval.video_needles import make_video_sample

EXAMPLES = os.path.join(REPO, "examples")


def _load_script():
    sys.path.insert(0, EXAMPLES)
    spec = importlib.util.spec_from_file_location("train_video_model", os.path.join(EXAMPLES, "train_video_model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = _load_script()


@pytest.fixture(scope="module")
def built():
    """(tokenizer, a fresh model with the offset heads and position-free rows, its language model)."""
    args = train.parse_args(["--vision-hidden", "32"])
    tok = train.build_tokenizer()
    model = train.build_model(args, tok)
    model.config.text_config._attn_implementation = train.register_capture()
    language = model.model.language_model
    train.offset_heads(language.layers[0].self_attn, args.head_scale, language.rotary_emb.inv_freq)
    train.content_rows(language, 4 * max(args.lengths))
    return tok, model.eval(), language


def test_attention_targets_name_the_needles():
    sample = make_video_sample("video_ordering", 300, seed=4, index=1, num_needles=3)
    rows = train.needle_tokens(sample)
    for index, needle in enumerate(sample.needles):
        pairs = [row - 2 for row in rows[index]]  # after BOS and <|vision_start|>
        assert all(any(2 * pair <= frame < 2 * pair + 2 for pair in pairs)
                   for frame in range(needle.start, needle.start + 3))
        assert len(pairs) == 2
    targets = train.attention_targets(sample, random.Random(0))
    final = sample.length - 1
    summary = [(row, keys) for layer, head, row, keys in targets if (layer, head) == (0, 0)]
    assert all(keys[0] == 0 and all(key <= row for key in keys) for row, keys in summary)
    everything = sorted(r for rs in rows.values() for r in rs)
    assert (1, 0, final, everything) in targets and (1, 1, final, [0] + everything) in targets
    words = sample.question.split()
    by_colour = {needle.colour: rows[index] for index, needle in enumerate(sample.needles)}
    assert (1, 2, final, by_colour[words[5]]) in targets and (1, 3, final, by_colour[words[7]]) in targets


def _layer_scores(built, sample, after_video=False, seconds=1.0):
    """Post-RoPE q/k of layers 0 and 1 on `sample` (its prompt) through the model's own rotary."""
    tok, model, language = built
    from longctx.families.qwen2_5_vl import video_prompt

    grid = (len(sample.frames) // 2, 2, 2)
    doc, query = video_prompt(tok, grid, sample.question)
    ids = torch.tensor(doc + query)
    is_video = ids == model.config.video_token_id
    embeds = model.get_input_embeddings()(ids).detach().clone()
    embeds[is_video] = torch.randn(int(is_video.sum()), embeds.shape[1], generator=torch.Generator().manual_seed(0))
    positions = train.prompt_positions(model, ids, is_video, grid, seconds, after_video)
    store = {}
    with torch.no_grad():
        language(inputs_embeds=embeds[None], position_ids=positions, use_cache=False, capture=store)
    return store


def test_offset_heads_read_the_question_words(built):
    """At the answer prefix, layer 0's heads 2 and 3 attend the words 3 and 5 back (the colours
    of an ordering question), under either position rule."""
    sample = make_video_sample("video_ordering", 200, seed=1)
    for after_video in (False, True):
        q, k = _layer_scores(built, sample, after_video)[0]
        final = sample.length - 1
        for head, offset in ((2, 3), (3, 5)):
            scores = k[0, 1, : final + 1] @ q[0, head, final] / math.sqrt(q.shape[-1])
            weights = torch.softmax(scores, 0)
            assert int(weights.argmax()) == final - offset and weights.max() > 0.99


def _rotated_scores(language, layer, hidden, positions):
    """[heads, S, S] post-RoPE q.k of `layer`'s attention on `hidden` [1, S, d] at M-RoPE
    `positions` [3, 1, S], through transformers' own rotary embedding and its apply function."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

    attn = language.layers[layer].self_attn
    heads, groups = language.config.num_attention_heads, language.config.num_key_value_heads
    q = attn.q_proj(hidden).view(1, -1, heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(hidden).view(1, -1, groups, attn.head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, *language.rotary_emb(hidden, positions))
    return q[0] @ k[0].repeat_interleave(heads // groups, 0).transpose(1, 2)


def test_lookups_do_not_depend_on_time(built):
    """On the same hidden states, layer 1's scores from the question over the video and BOS, and
    layer 0's first KV group's among video tokens, are the same whatever the clip's frame rate
    (its temporal positions) and wherever the text after the video is placed."""
    tok, model, language = built
    sample = make_video_sample("video_counting", 300, seed=2)
    from longctx.families.qwen2_5_vl import video_prompt

    grid = (len(sample.frames) // 2, 2, 2)
    doc, query = video_prompt(tok, grid, sample.question)
    ids = torch.tensor(doc + query)
    is_video = ids == model.config.video_token_id
    hidden = torch.randn(1, len(ids), language.config.hidden_size, generator=torch.Generator().manual_seed(0))
    tables = [train.prompt_positions(model, ids, is_video, grid, seconds, after)
              for seconds, after in ((1.0, False), (2.0, True), (0.5, True))]
    video = is_video.nonzero()[:, 0]
    question = torch.arange(int(video.max()) + 2, len(ids))
    with torch.no_grad():
        first = _rotated_scores(language, 1, hidden, tables[0])
        summary = _rotated_scores(language, 0, hidden, tables[0])[:2]
        attn = language.layers[1].self_attn
        norms = (attn.q_proj(hidden)[0].view(len(ids), 4, -1).norm(dim=-1).T[:, :, None]
                 * attn.k_proj(hidden)[0].view(len(ids), 2, -1).norm(dim=-1).T.repeat_interleave(2, 0)[:, None, :])
        keys = torch.cat([torch.tensor([0]), video])
        for table in tables[1:]:
            other = _rotated_scores(language, 1, hidden, table)
            change = (first - other).abs()[:, question][:, :, keys]
            # the kept pairs turn at most 0.6 rad over the longest trained positions; here (a 300-token
            # prompt, at most 4 positions a frame pair) at most 1,200 * 3.2e-5 rad
            assert (change <= 0.04 * norms[:, question][:, :, keys] + 1e-5).all()
            moved = _rotated_scores(language, 0, hidden, table)[:2]
            assert torch.allclose(summary[:, video][:, :, video], moved[:, video][:, :, video], atol=1e-4)
        rate = train.prompt_positions(model, ids, is_video, grid, 0.5, False)
        assert torch.allclose(first, _rotated_scores(language, 1, hidden, rate), atol=1e-4)  # this transformers' rule
    assert not torch.allclose(_rotated_scores(language, 0, hidden, tables[0])[2:],
                              _rotated_scores(language, 0, hidden, tables[2])[2:], atol=1e-3)


def test_position_rules():
    """Text after the video starts where transformers puts it, or one past the video's largest
    position with `after_video` (the older rule)."""
    tok = train.build_tokenizer()
    model = train.build_model(train.parse_args(["--vision-hidden", "32"]), tok)
    ids = torch.tensor([tok.bos_token_id, model.config.vision_start_token_id] + [model.config.video_token_id] * 5
                       + [model.config.vision_end_token_id, 5, 6])
    is_video = ids == model.config.video_token_id
    now = train.prompt_positions(model, ids, is_video, (5, 2, 2), 1.0, False)[:, 0]
    older = train.prompt_positions(model, ids, is_video, (5, 2, 2), 1.0, True)[:, 0]
    assert older[0, 2:7].tolist() == [2, 4, 6, 8, 10]  # two positions per second, one patch per second
    assert older[:, 7].tolist() == [11, 11, 11] and older[:, 9].tolist() == [13, 13, 13]
    assert torch.equal(now[:, :7], older[:, :7]) and now[0, 7] < 11


def test_vision_pairs_are_labelled_by_what_they_show():
    frames, labels = train.pair_batch(random.Random(3), 64)
    vivid = []
    for pair in range(64):
        pixels = frames[2 * pair:2 * pair + 2].astype(np.float32)
        saturation = (pixels.max(-1) - pixels.min(-1)) / np.maximum(pixels.max(-1), 1)
        vivid.append(bool((saturation > 0.6).any()))
    assert vivid == (labels[:, 0] == 1).tolist()
    assert 10 < int(labels[:, 0].sum()) < 54 and (labels[labels[:, 0] == 0, 1:] == -1).all()


def test_counting_reading_of_an_even_head(built):
    """examples/inspect_video_counting.py: a layer-1 head 1 with q = 0 reads every row evenly, so
    its BOS share is 1 / (2 n + 1) of BOS and needles together and the implied count is n."""
    import copy

    sys.path.insert(0, EXAMPLES)
    from inspect_video_counting import counting_reading

    tok, model, _ = built
    model = copy.deepcopy(model)
    head_dim = model.config.text_config.hidden_size // model.config.text_config.num_attention_heads
    with torch.no_grad():
        for param in model.model.language_model.layers[1].self_attn.q_proj.parameters():
            param[head_dim:2 * head_dim] = 0
    sample = make_video_sample("video_counting", 200, seed=5, index=0, num_needles=3)
    reading = counting_reading(model, tok, sample)
    assert reading["implied"] == pytest.approx(3.0, abs=1e-4)
    assert reading["bos"] == pytest.approx(1 / sample.length, rel=1e-4)
    assert reading["elsewhere"] == pytest.approx(1 - 7 / sample.length, rel=1e-4)
