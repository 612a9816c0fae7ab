"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`) for video questions: a tiny random-weight
model writer, the frame-parallel vision encoder, and the prompt's tokens and M-RoPE positions.

The vision encoder attends within one temporal patch at a time (its full-attention layers'
sequences are one frame pair each; its window attention stays inside them), so encoding the
temporal patches in groups gives the same embeddings as encoding them all at once: hosts split
them evenly (`frame_shares`), each encodes its share, and the embeddings are all-gathered in
order. Only transformers' own model code runs (`model.model.visual`).
"""

import json
import os

import torch

from longctx.errors import LongCtxError

FAMILY = "qwen2_5_vl"
VIDEO_FAMILIES = (FAMILY,)
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def is_video_model(config):
    """True for a config of the supported video-language family (Qwen2.5-VL): the whole model's
    config or its language model's (`check_model_dir` returns the latter)."""
    return getattr(config, "model_type", None) in (FAMILY, FAMILY + "_text")


def video_model_class():
    """The transformers class that loads a Qwen2.5-VL directory (`load_model`)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration


def video_prompt(tokenizer, grid, question, merge=2):
    """Token ids (doc_ids, query_ids) of a question about a video with patch grid `grid`.

    The document is the tokenizer's special prefix (BOS, if any), `<|vision_start|>`, one
    `<|video_pad|>` per language-model token of the video (`video_token_count`) and
    `<|vision_end|>`; the question follows without special tokens (no chat template, as for
    text). LongCtxError when the tokenizer lacks the vision tokens or the question is empty.
    """
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in VISION_TOKENS}
    missing = [token for token, index in ids.items() if index is None or index == tokenizer.unk_token_id]
    if missing:
        raise LongCtxError(f"the tokenizer has no {', '.join(missing)} token: not a Qwen2.5-VL tokenizer")
    query_ids = tokenizer(question, add_special_tokens=False)["input_ids"] if question else []
    if not query_ids:
        raise LongCtxError("a question about a video is required (--question TEXT)")
    prefix = tokenizer("", add_special_tokens=True)["input_ids"]
    pads = [ids["<|video_pad|>"]] * video_token_count(grid, merge)
    return prefix + [ids["<|vision_start|>"]] + pads + [ids["<|vision_end|>"]], query_ids


class VideoInputs:
    """One video request's model inputs on one worker: the vision embeddings of the whole video
    (frame-parallel over the workers, `encode_video`) and the M-RoPE position table.

    `ids` are the whole sequence's token ids (document then question) holding one
    `<|video_pad|>` per vision embedding; `video` a `longctx.video.VideoPatches`. The table
    [3, S] comes once from the model's own `get_rope_index` over the whole sequence; each
    method's positions then slice it (`position_ids`); positions past the sequence (decoding)
    are text positions offset by the rope delta. Who makes it: the engine's prefill.
    """

    def __init__(self, model, ids, video, comm, frame_parallel=True):
        config = model.config
        device = model.device
        self.ids = torch.tensor(ids, dtype=torch.long, device=device)
        self.is_video = self.ids == config.video_token_id
        expected = video_token_count(video.grid, config.vision_config.spatial_merge_size)
        if int(self.is_video.sum()) != expected:
            raise LongCtxError(f"the prompt holds {int(self.is_video.sum())} video tokens, the video {expected}")
        self.slot = torch.cumsum(self.is_video, 0) - 1  # the vision embedding of each video token
        table, delta = model.model.get_rope_index(
            self.ids[None], mm_token_type_ids=(2 * self.is_video.int())[None], video_grid_thw=torch.tensor([video.grid]),
            second_per_grid_ts=torch.tensor([video.seconds_per_patch]))
        self.table, self.delta = table[:, 0].to(device), int(delta)
        pixels = torch.from_numpy(video.pixels).to(device)
        self.vision = encode_video(model.model.visual, pixels, video.grid, comm, frame_parallel, video.patch_range)

    def embeds(self, model, sources):
        """inputs_embeds [1, n, d] of the rows whose tokens are the sequence's `sources` (global
        indices, in row order): the token embeddings, video tokens replaced by their vision
        embeddings."""
        sources = torch.tensor(sources, dtype=torch.long, device=self.ids.device)
        embeds = model.get_input_embeddings()(self.ids[sources])
        video = self.is_video[sources]
        embeds[video] = self.vision[self.slot[sources[video]]].to(embeds.dtype)
        return embeds[None]

    def position_ids(self, positions):
        """M-RoPE position ids [3, 1, n] of sequence positions `positions` (table columns; a
        position at or past the table's end is text: position + rope delta on all three axes)."""
        positions = torch.tensor(positions, dtype=torch.long, device=self.table.device)
        inside = positions < self.table.shape[1]
        text = (positions + self.delta).expand(3, -1)
        return torch.where(inside, self.table[:, positions.clamp(max=self.table.shape[1] - 1)], text)[:, None]


def frame_shares(temporal_patches, world):
    """[start, stop) temporal patch ranges of each of `world` hosts (as equal as possible, in
    order); LongCtxError when there are fewer temporal patches than hosts."""
    if temporal_patches < world:
        raise LongCtxError(f"the video has {temporal_patches} temporal patches (frame pairs) after sampling, "
                           f"fewer than the {world} workers; sample more frames or use fewer workers")
    base, extra = divmod(temporal_patches, world)
    bounds = [0]
    for rank in range(world):
        bounds.append(bounds[-1] + base + (1 if rank < extra else 0))
    return list(zip(bounds, bounds[1:]))


def encode_video(visual, pixels, grid, comm, frame_parallel=True, held=None):
    """Vision embeddings [t*h*w / merge^2, d] of a whole video on every host.

    `visual` is the model's vision encoder (`model.model.visual`), `pixels` float
    [n*h*w, patch_dim] (`longctx.video.VideoPatches.pixels` as a tensor on the model's
    device) of the temporal patches `held` ([start, stop), default all of them) of a video
    of patch grid `grid` (t, h, w). With `frame_parallel` host r encodes its `frame_shares`
    range of temporal patches (it must hold them; the launchers send each worker only those)
    and the pieces are all-gathered through `comm` (a `Comm`) in order; otherwise every host
    encodes the whole video, which it must hold.
    """
    t, h, w = grid
    per_patch = h * w
    first, last = held or (0, t)
    parallel = frame_parallel and comm.world > 1
    shares = frame_shares(t, comm.world) if parallel else [(0, t)]
    start, stop = shares[comm.rank if parallel else 0]
    if not first <= start <= stop <= last:
        raise ValueError(f"worker {comm.rank} holds temporal patches [{first}, {last}) of the video and must encode "
                         f"[{start}, {stop})")
    mine = _encode(visual, pixels[(start - first) * per_patch:(stop - first) * per_patch], (stop - start, h, w))
    if not parallel:
        return mine
    merged = per_patch // visual.spatial_merge_size**2
    parts = comm.all_gather(mine, sizes=[(b - a) * merged for a, b in shares], dim=0)
    return torch.cat(parts, dim=0)


def _encode(visual, pixels, grid):
    """The encoder's merged output [tokens, d] for one group of temporal patches."""
    output = visual(pixels.to(visual.dtype), grid_thw=torch.tensor([grid], device=pixels.device))
    return getattr(output, "pooler_output", output)


def video_token_count(grid, merge=2):
    """Language-model tokens of a video with patch grid (t, h, w)."""
    t, h, w = grid
    return t * h * w // (merge * merge)


def write_tiny_model(out_dir, tokenizer_object, hidden=64, layers=2, heads=4, kv_heads=2, seed=0,
                     max_positions=32768, intermediate=None, max_pixels=28 * 28 * 16):
    """Write a random-weight Qwen2.5-VL (tiny vision encoder too) with `tokenizer_object` (a
    `tokenizers.Tokenizer` holding VISION_TOKENS) and a preprocessor_config.json that
    `longctx.video` reads offline (`max_pixels`: the pixel bound per frame; the default keeps
    frames at <= 16 patches, 4 language-model tokens per frame pair). Returns `out_dir`. Who
    calls it: `longctx.models.tiny`."""
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>")
    tokenizer.add_bos_token = True
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in VISION_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_positions, use_sliding_window=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": _mrope_section(hidden // heads)},
                         bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1], tokens_per_second=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as handle:
        json.dump({"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 28 * 28 * 4,
                   "max_pixels": max_pixels, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                   "image_std": [0.26862954, 0.26130258, 0.27577711]}, handle, indent=1)
    return out_dir


def _mrope_section(head_dim):
    """M-RoPE's split of the head_dim/2 rotary frequencies into (temporal, height, width)."""
    half = head_dim // 2
    return [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
