"""Video input: decode frames, sample them, and turn them into Qwen2-VL vision patches.

Frames come from a file (PyAV, the `video` extra: `pip install longctx[video]`) or from Python
(an array [T, H, W, 3] uint8 or a list of H x W x 3 images). Sampling takes `num_frames`
frames, or `fps` frames per second of the source, evenly spaced, a multiple of the temporal
patch (transformers' Qwen2-VL video sampling rule).

The patches follow the Qwen2-VL video processor's rules, implemented here because
transformers' `Qwen2VLVideoProcessor` needs torchvision (which has no build matching every
torch; on this project's CPU torch it does not import): every frame is resized by
`smart_resize` (both sides multiples of patch * merge, pixel count within
[min_pixels, max_pixels]; transformers' own function from its PIL image processor, which needs
no torchvision), bicubic, rescaled to [0, 1], normalised with the CLIP mean/std, then frames
are padded (last frame repeated) to a multiple of `temporal_patch_size` and cut into
[t * h * w, 3 * temporal * patch * patch] patches in the merge-window order the vision
encoder expects. `grid` is (t, h, w) in patches.

A request carries the video as its resized frames, uint8 (a quarter of the float32 patches),
and each worker receives only the temporal patches it encodes (`VideoPatches.share`); the
rescaling, normalisation and patch order run on the worker (`VideoPatches.pixels`), giving the
same float32 patches bit for bit.
"""

import json
import os
from dataclasses import dataclass

import numpy as np

from longctx.errors import LongCtxError

DEFAULTS = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 128 * 28 * 28,
            "max_pixels": 768 * 28 * 28, "image_mean": (0.48145466, 0.4578275, 0.40821073),
            "image_std": (0.26862954, 0.26130258, 0.27577711)}


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
    """Patch sizes, pixel bounds and normalisation from `model_dir`'s preprocessor_config.json
    (DEFAULTS for what it does not say; a missing file means the defaults)."""
    settings = dict(DEFAULTS)
    path = os.path.join(model_dir, "preprocessor_config.json") if model_dir else ""
    if path and os.path.isfile(path):
        with open(path) as handle:
            saved = json.load(handle)
        size = saved.get("size") or {}
        saved.setdefault("min_pixels", size.get("shortest_edge"))
        saved.setdefault("max_pixels", size.get("longest_edge"))
        settings.update({key: saved[key] for key in DEFAULTS if saved.get(key) is not None})
    return settings


def read_frames(path):
    """(frames [T, H, W, 3] uint8, frames per second) of the video file at `path` (PyAV).

    LongCtxError (one line) when PyAV is missing, the file cannot be decoded or has no frames.
    """
    try:
        import av
    except ImportError:
        raise LongCtxError("reading video files needs PyAV: pip install 'longctx[video]' (or pip install av)") from None
    if not os.path.isfile(path):
        raise LongCtxError(f"video file {path!r} does not exist")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise LongCtxError(f"{path!r} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 1)
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except LongCtxError:
        raise
    except Exception as exc:  # PyAV raises its own error types for every kind of bad file
        raise LongCtxError(f"cannot read video {path!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    if not frames:
        raise LongCtxError(f"video {path!r} has no frames")
    return np.stack(frames), fps


def as_frames(video):
    """Frames [T, H, W, 3] uint8 from an array [T, H, W, 3] or a list of H x W x 3 images
    (numpy arrays or PIL images); LongCtxError for anything else or no frames."""
    if isinstance(video, (list, tuple)):
        video = [np.asarray(frame) for frame in video]
        if not video:
            raise LongCtxError("the video has no frames")
        video = np.stack(video)
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] == 0:
        raise LongCtxError(f"a video must be frames [T, H, W, 3] with T >= 1 (got shape {tuple(video.shape)})")
    if video.dtype != np.uint8:
        video = np.clip(video, 0, 255).astype(np.uint8)
    return video


def sample_indices(total, source_fps, num_frames=None, fps=None, temporal=2, max_frames=768):
    """Indices of the frames kept from `total` frames: `num_frames` (rounded to a multiple of
    `temporal`), or `fps` per second of a `source_fps` video (floored to a multiple), evenly
    spaced; all frames when neither is given. LongCtxError when nothing is left."""
    if num_frames is not None and fps is not None:
        raise LongCtxError("give either a frame count or fps for sampling, not both")
    if num_frames is not None:
        count = round(num_frames / temporal) * temporal
    elif fps is not None:
        count = min(total / source_fps * fps, max_frames, total)
        count = int(count // temporal) * temporal
    else:
        return list(range(total))
    if count < 1:
        raise LongCtxError(f"sampling leaves no frames ({total} frames at {source_fps:g} fps; asked for "
                           f"{num_frames if num_frames is not None else f'{fps:g} fps'}, in groups of {temporal})")
    if count > total:
        raise LongCtxError(f"cannot sample {count} frames from a video of {total}")
    return [int(index) for index in np.arange(0, total, total / count)[:count]]


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


def load_video(video, model_dir=None, num_frames=None, fps=None, source_fps=None):
    """VideoPatches of `video` (a file path, an array or a list of frames) under `model_dir`'s
    processor settings, sampled by `num_frames` or `fps` (`source_fps`: the frame rate of
    frames given from Python, default 1); VideoPatches already made are returned as they are.
    LongCtxError (one line) on bad input."""
    if isinstance(video, VideoPatches):
        return video
    settings = processor_settings(model_dir)
    if isinstance(video, (str, os.PathLike)):
        frames, rate = read_frames(os.fspath(video))
    else:
        frames, rate = as_frames(video), float(source_fps or 1.0)
    total = len(frames)
    frames = frames[sample_indices(total, rate, num_frames, fps, settings["temporal_patch_size"])]
    resized = resize_frames(frames, settings)
    sampled_fps = len(frames) * rate / total  # kept frames over the video's duration
    return VideoPatches(resized, grid_of(resized, settings), settings["temporal_patch_size"] / sampled_fps, settings)
