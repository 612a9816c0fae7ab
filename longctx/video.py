"""Video input, whatever the model family: decode frames and sample them.

Frames come from a file (PyAV, the `video` extra: `pip install longctx[video]`) or from Python
(an array [T, H, W, 3] uint8 or a list of H x W x 3 images). Sampling takes `num_frames`
frames, or `fps` frames per second of the source, evenly spaced, a multiple of the temporal
patch (transformers' Qwen2-VL video sampling rule). A family's processor turns the sampled
frames into its model's inputs (`longctx.families.qwen2_5_vl.patchify`).
"""

import math
import os

import numpy as np

from longctx.errors import LongCtxError


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


def sample_indices(total, source_fps, num_frames=None, fps=None, temporal=2, max_frames=768, min_frames=4):
    """Indices of the frames kept from `total` frames, as transformers' Qwen2-VL video processor
    samples: `num_frames` (rounded to a multiple of `temporal`), or `fps` per second of a
    `source_fps` video, at least `min_frames` and at most `max_frames` (and the video's),
    floored to a multiple of `temporal`; evenly spaced; all frames when neither is given.
    LongCtxError when nothing is left."""
    if num_frames is not None and fps is not None:
        raise LongCtxError("give either a frame count or fps for sampling, not both")
    if num_frames is not None:
        count = round(num_frames / temporal) * temporal
    elif fps is not None:
        most = math.floor(min(max_frames, total) / temporal) * temporal
        count = min(max(total / source_fps * fps, min_frames), most, total)
        count = int(count // temporal) * temporal
    else:
        return list(range(total))
    if count < 1:
        raise LongCtxError(f"sampling leaves no frames ({total} frames at {source_fps:g} fps; asked for "
                           f"{num_frames if num_frames is not None else f'{fps:g} fps'}, in groups of {temporal})")
    if count > total:
        raise LongCtxError(f"cannot sample {count} frames from a video of {total}")
    return [int(index) for index in np.arange(0, total, total / count)[:count]]
