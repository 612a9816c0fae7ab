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
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def is_video_model(config):
    """True for a config of the supported video-language family (Qwen2.5-VL)."""
    return getattr(config, "model_type", None) == FAMILY


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


def encode_video(visual, pixels, grid, comm, frame_parallel=True):
    """Vision embeddings [t*h*w / merge^2, d] of a whole video on every host.

    `visual` is the model's vision encoder (`model.model.visual`), `pixels` float
    [t*h*w, patch_dim] (`longctx.video.VideoPatches.pixels` as a tensor on the model's
    device), `grid` (t, h, w). With `frame_parallel` host r encodes its `frame_shares` range
    of temporal patches and the pieces are all-gathered through `comm` (a `Comm`) in order;
    otherwise every host encodes the whole video.
    """
    t, h, w = grid
    per_patch = h * w
    if not frame_parallel or comm.world == 1:
        return _encode(visual, pixels, (t, h, w))
    shares = frame_shares(t, comm.world)
    start, stop = shares[comm.rank]
    mine = _encode(visual, pixels[start * per_patch : stop * per_patch], (stop - start, h, w))
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
                     max_positions=32768, intermediate=None):
    """Write a random-weight Qwen2.5-VL (tiny vision encoder too) with `tokenizer_object` (a
    `tokenizers.Tokenizer` holding VISION_TOKENS) and a preprocessor_config.json that
    `longctx.video` reads offline. Returns `out_dir`. Who calls it: `longctx.models.tiny`."""
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
                   "max_pixels": 28 * 28 * 16, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                   "image_std": [0.26862954, 0.26130258, 0.27577711]}, handle, indent=1)
    return out_dir


def _mrope_section(head_dim):
    """M-RoPE's split of the head_dim/2 rotary frequencies into (temporal, height, width)."""
    half = head_dim // 2
    return [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
