"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): the model-family adapter for video questions.

Everything longctx knows about this family is here: the prompt layout (`video_prompt`: BOS,
`<|vision_start|>`, one `<|video_pad|>` per vision embedding, `<|vision_end|>`, then the
question), the video processor (`patchify`, `processor_settings`), the frame-parallel vision
encoder (`encode_video`), the M-RoPE positions (`VideoInputs`) and a tiny random-weight model
writer for tests. Frames are decoded and sampled by `longctx.video`.

**The processor.** transformers' `Qwen2VLVideoProcessor` needs torchvision (which has no build
matching every torch; on this project's CPU torch it does not import), so its rules are
implemented here: every frame is resized by `smart_resize` (both sides multiples of
patch * merge, pixel count within [min_pixels, max_pixels]; transformers' own function from its
PIL image processor, which needs no torchvision), bicubic, rescaled to [0, 1], normalised with
the CLIP mean/std, then frames are padded (last frame repeated) to a multiple of
`temporal_patch_size` and cut into [t * h * w, 3 * temporal * patch * patch] patches in the
merge-window order the vision encoder expects. `grid` is (t, h, w) in patches.
A request carries the video as its resized frames, uint8 (a quarter of the float32 patches),
and each worker receives only the temporal patches it encodes (`split_media`,
`VideoPatches.share`); the rescaling, normalisation and patch order run on the worker
(`VideoPatches.pixels`), giving the same float32 patches bit for bit.

**The encoder split.** The vision encoder attends within one temporal patch at a time (its
full-attention layers' sequences are one frame pair each; its window attention stays inside
them), so encoding the temporal patches in groups gives the same embeddings as encoding them
all at once: hosts split them evenly (`frame_shares`), each encodes its share, and the
embeddings are all-gathered in order. Only transformers' own model code runs
(`model.model.visual`).
"""

import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from longctx.errors import LongCtxError
from longctx.models.family import ModelFamily
from longctx.video import as_frames, read_frames, sample_indices

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULTS = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 128 * 28 * 28,
            "max_pixels": 768 * 28 * 28, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "min_frames": 4,
            "max_frames": 768}
# Where the processor's settings live, in the order transformers' video processor looks
# (`BaseVideoProcessor.get_video_processor_dict`): the "video_processor" section of the v5
# processor_config.json, then video_preprocessor_config.json, then preprocessor_config.json.
PROCESSOR_FILES = (("processor_config.json", "video_processor"), ("video_preprocessor_config.json", None),
                   ("preprocessor_config.json", None))
# The frame rate of frames handed in from Python without one: qwen-vl-utils' `fetch_video`
# returns 2.0 for a list of frames (the reference's speed test feeds videos through its
# `process_vision_info`), and Qwen2.5-VL's processor assumed 2 fps when none was given.
PYTHON_FRAMES_FPS = 2.0


class Qwen25VLFamily(ModelFamily):
    """The Qwen2.5-VL adapter: a prompt is a video and a question (`video_prompt`); the video's
    vision embeddings replace the `<|video_pad|>` rows and M-RoPE positions come from the
    model's own `get_rope_index` (`VideoInputs`)."""

    name = "qwen2_5_vl"
    title = "Qwen2.5-VL"
    media = "video"
    tiny_tokens = VISION_TOKENS

    def language_config(self, config):
        """The language model's config (`text_config`), which holds the shape planners read."""
        return config.get_text_config()

    def encode(self, tokenizer, model_dir, prompt):
        """(doc_ids, query_ids, VideoPatches) of `prompt.video` (a file path, frames [T, H, W, 3],
        a list of frames, or VideoPatches already loaded) sampled by `prompt.num_frames` or
        `prompt.fps` under `model_dir`'s processor settings."""
        patches = load_video(prompt.video, model_dir, prompt.num_frames, prompt.fps, prompt.video_fps,
                             max_pixels=prompt.max_pixels, max_frames=prompt.max_frames)
        merge = processor_settings(model_dir)["merge_size"]
        return (*video_prompt(tokenizer, patches.grid, prompt.question, merge), patches)

    def split_media(self, media, world, encoder_split):
        """With the encoder split, each worker's `frame_shares` of the temporal patches (at least
        as many patches as workers): it receives only the frames it encodes."""
        return tuple(frame_shares(media.grid[0], world)) if encoder_split else None

    def model_class(self):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    def hf_inputs(self, model, input_ids, media):
        """transformers' own video inputs of `media` (a whole video's VideoPatches): its patches,
        grid, seconds per temporal patch and the token types that mark the video's rows."""
        device = input_ids.device
        return {"pixel_values_videos": torch.from_numpy(media.pixels).to(device),
                "video_grid_thw": torch.tensor([media.grid], device=device),
                "second_per_grid_ts": torch.tensor([media.seconds_per_patch], device=device),
                "mm_token_type_ids": 2 * (input_ids == model.config.video_token_id).int()}

    def encoder(self, model):
        """The vision tower (`model.model.visual`)."""
        return model.model.visual

    def attention_implementation(self, name):
        """longctx attention for the language model, SDPA for the vision encoder (it runs outside
        any worker context)."""
        return {"text_config": name, "vision_config": "sdpa"}

    def prefill_inputs(self, model, ctx, request):
        """inputs_embeds (vision embeddings in the video rows) and M-RoPE position_ids of this
        worker's rows: `ctx.method.local_inputs` on global indices tells each row's token. Keeps
        the request's `VideoInputs` in `ctx.inputs` for the steps."""
        ids = list(request.doc_ids) + list(request.query_ids)
        ctx.inputs = VideoInputs(model, ids, request.media, ctx.comm, ctx.method.encoder_split())
        doc_len = len(request.doc_ids)
        sources, positions = ctx.method.local_inputs(ctx.plan, ctx.rank, list(range(doc_len)),
                                                     list(range(doc_len, len(ids))))
        return {"inputs_embeds": ctx.inputs.embeds(model, sources), "position_ids": ctx.inputs.position_ids(positions)}

    def step_inputs(self, model, ctx, ids, positions):
        """input_ids and M-RoPE position_ids of new tokens (text positions after the video)."""
        return {"input_ids": torch.tensor([ids], device=model.device), "position_ids": ctx.inputs.position_ids(positions)}

    def write_tiny(self, out_dir, tokenizer_object, hidden, layers, heads, kv_heads, seed, max_positions,
                   intermediate=None, max_pixels=None):
        """`write_tiny_model` (`max_pixels` None: its default)."""
        sizes = {} if max_pixels is None else {"max_pixels": max_pixels}
        return write_tiny_model(out_dir, tokenizer_object, hidden, layers, heads, kv_heads, seed, max_positions,
                                intermediate, **sizes)


# ---------------------------------------------------------------------------------------------
# The video processor


@dataclass(frozen=True)
class VideoPatches:
    """A processed video, or the share of it one worker encodes: `frames` uint8 [n * temporal,
    H, W, 3], resized and padded, holding temporal patches `first` .. `first + n - 1` of the
    whole video's `grid` (t, h, w) in patches; `seconds_per_patch` is the time one temporal
    patch spans (M-RoPE's spacing); `settings` the processor's sizes and normalisation."""

    frames: np.ndarray
    grid: tuple
    seconds_per_patch: float
    settings: dict
    first: int = 0

    def describe(self):
        """'video 8x4x6 patches' (t x h x w) of the whole video."""
        return f"video {'x'.join(map(str, self.grid))} patches"

    @property
    def patch_range(self):
        """[start, stop) of the whole video's temporal patches these frames hold."""
        return self.first, self.first + len(self.frames) // self.settings["temporal_patch_size"]

    @property
    def pixels(self):
        """float32 [n*h*w, 3*temporal*patch*patch]: the encoder's input for the patches held
        (rows of the whole video's patches from `first * h * w` on)."""
        return patches_of(self.frames, self.settings)

    def share(self, start, stop):
        """The same video holding only temporal patches [start, stop) (of those held)."""
        first, last = self.patch_range
        if not first <= start <= stop <= last:
            raise ValueError(f"temporal patches [{start}, {stop}) are not within the [{first}, {last}) held")
        temporal = self.settings["temporal_patch_size"]
        frames = self.frames[(start - first) * temporal:(stop - first) * temporal]
        return VideoPatches(frames, self.grid, self.seconds_per_patch, self.settings, start)


def processor_settings(model_dir):
    """Patch sizes, pixel and frame bounds and normalisation of `model_dir`'s video processor:
    the first of PROCESSOR_FILES that holds them (DEFAULTS for what it does not say; none: the
    defaults). `size`'s shortest / longest edge are the pixel bounds, as transformers reads them."""
    settings = dict(DEFAULTS)
    saved = _saved_processor(model_dir) if model_dir else None
    if saved is not None:
        size = saved.get("size") or {}
        saved.setdefault("min_pixels", size.get("shortest_edge"))
        saved.setdefault("max_pixels", size.get("longest_edge"))
        settings.update({key: saved[key] for key in DEFAULTS if saved.get(key) is not None})
    return settings


def _saved_processor(model_dir):
    """The video processor's saved dict under `model_dir` (PROCESSOR_FILES' order), or None."""
    for name, section in PROCESSOR_FILES:
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as handle:
                saved = json.load(handle)
        except (OSError, ValueError) as exc:
            raise LongCtxError(f"cannot read the processor settings {path}: {exc}") from None
        if section is None:
            return saved
        if isinstance(saved.get(section), dict):
            return saved[section]
    return None


def resize_frames(frames, settings):
    """Already sampled `frames` [T, H, W, 3] uint8 resized (`smart_resize`, bicubic) and padded
    (last frame repeated) to a multiple of the temporal patch: uint8 [T', H', W', 3]."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    patch, merge, temporal = settings["patch_size"], settings["merge_size"], settings["temporal_patch_size"]
    height, width = frames.shape[1:3]
    try:
        new_h, new_w = smart_resize(height, width, factor=patch * merge, min_pixels=settings["min_pixels"],
                                    max_pixels=settings["max_pixels"])
    except ValueError as exc:
        raise LongCtxError(f"cannot resize {height}x{width} frames: {exc}") from None
    resized = np.stack([np.asarray(Image.fromarray(frame).resize((new_w, new_h), Image.BICUBIC)) for frame in frames])
    if pad := -len(resized) % temporal:
        resized = np.concatenate([resized, np.repeat(resized[-1:], pad, axis=0)])
    return resized


def patches_of(resized, settings):
    """float32 patches [t*h*w, 3*temporal*patch*patch] of `resize_frames`' output: rescaled to
    [0, 1], normalised, in the vision encoder's patch order."""
    patch, merge, temporal = settings["patch_size"], settings["merge_size"], settings["temporal_patch_size"]
    mean, std = np.asarray(settings["image_mean"], np.float32), np.asarray(settings["image_std"], np.float32)
    video = ((resized.astype(np.float32) / 255.0 - mean) / std).transpose(0, 3, 1, 2)  # [T, C, H, W]
    grid_t, grid_h, grid_w = len(video) // temporal, resized.shape[1] // patch, resized.shape[2] // patch
    patches = video.reshape(grid_t, temporal, 3, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(patches.reshape(grid_t * grid_h * grid_w, 3 * temporal * patch * patch))


def grid_of(resized, settings):
    """(t, h, w) in patches of `resize_frames`' output."""
    patch = settings["patch_size"]
    return len(resized) // settings["temporal_patch_size"], resized.shape[1] // patch, resized.shape[2] // patch


def patchify(frames, settings):
    """(float32 patches, grid (t, h, w)) of already sampled `frames` [T, H, W, 3] uint8 (resize,
    rescale, normalise, temporal padding and patch order as the module docstring says)."""
    resized = resize_frames(frames, settings)
    return patches_of(resized, settings), grid_of(resized, settings)


def load_video(video, model_dir=None, num_frames=None, fps=None, source_fps=None, max_pixels=None, max_frames=None):
    """VideoPatches of `video` (a file path, an array or a list of frames) under `model_dir`'s
    processor settings, sampled by `num_frames` or `fps` (`source_fps`: the frame rate of
    frames given from Python, default PYTHON_FRAMES_FPS) as transformers' Qwen2-VL video
    processor samples (with `fps`, at least its `min_frames` and at most `max_frames`);
    `max_pixels` / `max_frames` override the processor's for this request. VideoPatches already
    made are returned as they are. LongCtxError (one line) on bad input."""
    if isinstance(video, VideoPatches):
        return video
    settings = processor_settings(model_dir)
    for name, value in (("max_pixels", max_pixels), ("max_frames", max_frames)):
        if value is not None:
            if value < 1:
                raise LongCtxError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
            settings[name] = value
    settings["min_pixels"] = min(settings["min_pixels"], settings["max_pixels"])
    if isinstance(video, (str, os.PathLike)):
        frames, rate = read_frames(os.fspath(video))
    else:
        frames, rate = as_frames(video), float(source_fps or PYTHON_FRAMES_FPS)
    total = len(frames)
    frames = frames[sample_indices(total, rate, num_frames, fps, settings["temporal_patch_size"],
                                   settings["max_frames"], settings["min_frames"])]
    resized = resize_frames(frames, settings)
    sampled_fps = len(frames) * rate / total  # kept frames over the video's duration
    return VideoPatches(resized, grid_of(resized, settings), settings["temporal_patch_size"] / sampled_fps, settings)


# ---------------------------------------------------------------------------------------------
# The prompt, the frame-parallel encoder and the M-RoPE positions


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


def video_token_count(grid, merge=2):
    """Language-model tokens of a video with patch grid (t, h, w)."""
    t, h, w = grid
    return t * h * w // (merge * merge)


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
    [n*h*w, patch_dim] (`VideoPatches.pixels` as a tensor on the model's
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


class VideoInputs:
    """One video request's model inputs on one worker: the vision embeddings of the whole video
    (frame-parallel over the workers, `encode_video`) and the M-RoPE position table.

    `ids` are the whole sequence's token ids (document then question) holding one
    `<|video_pad|>` per vision embedding; `video` the request's `VideoPatches`. The table
    [3, S] comes once from the model's own `get_rope_index` over the whole sequence; each
    method's positions then slice it (`position_ids`); positions past the sequence (decoding)
    are text positions offset by the rope delta. Who makes it: `Qwen25VLFamily.prefill_inputs`.
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


# ---------------------------------------------------------------------------------------------
# A tiny random-weight model for tests


def write_tiny_model(out_dir, tokenizer_object, hidden=64, layers=2, heads=4, kv_heads=2, seed=0,
                     max_positions=32768, intermediate=None, max_pixels=28 * 28 * 16):
    """Write a random-weight Qwen2.5-VL (tiny vision encoder too) with `tokenizer_object` (a
    `tokenizers.Tokenizer` holding VISION_TOKENS) and a preprocessor_config.json that
    `processor_settings` reads offline (`max_pixels`: the pixel bound per frame; the default keeps
    frames at <= 16 patches, 4 language-model tokens per frame pair). Returns `out_dir`. Who
    calls it: `Qwen25VLFamily.write_tiny` (`longctx.models.tiny`)."""
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
                   "max_pixels": max_pixels, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)},
                  handle, indent=1)
    return out_dir


def _mrope_section(head_dim):
    """M-RoPE's split of the head_dim/2 rotary frequencies into (temporal, height, width)."""
    half = head_dim // 2
    return [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
