"""Video input for Spava: frames (PyAV or arrays), sampling, Qwen2-VL patches, and the
frame-parallel vision encoder of a tiny random Qwen2.5-VL against the single-process one."""

import threading

import numpy as np
import pytest
import torch

from helpers import ThreadComm
from longctx.comm import Comm
from longctx.errors import LongCtxError
from longctx.models.qwen_vl import encode_video, frame_shares
from longctx.models.tiny import make_tiny_model
from longctx.video import load_video, patchify, processor_settings, read_frames, sample_indices

FRAMES = np.random.default_rng(0).integers(0, 256, (12, 50, 70, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_vl(tmp_path_factory):
    """(model dir, loaded fp32 Qwen2.5-VL)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    path = make_tiny_model(str(tmp_path_factory.mktemp("tiny-vl")), "qwen2_5_vl", seed=1)
    return path, Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()


def test_still_video_patches_equal_transformers_image_processor(tiny_vl):
    """Two equal frames make one temporal patch: exactly the (torchvision-free) PIL image processor's patches."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    settings = processor_settings(tiny_vl[0])
    pixels, grid = patchify(np.stack([FRAMES[0], FRAMES[0]]), settings)
    reference = Qwen2VLImageProcessorPil(min_pixels=settings["min_pixels"], max_pixels=settings["max_pixels"])(
        images=[FRAMES[0]], return_tensors="np")
    assert list(grid) == reference["image_grid_thw"][0].tolist()
    assert np.array_equal(pixels, reference["pixel_values"])


def test_temporal_patches_follow_the_video_processor_layout(tiny_vl):
    """[t, temporal, C, h/m, m, p, w/m, m, p] permuted (t, h/m, w/m, m, m, C, temporal, p, p), as
    transformers' Qwen2VLVideoProcessor.patchify documents; an odd frame count repeats the last."""
    settings = processor_settings(tiny_vl[0])
    pixels, (t, h, w) = patchify(FRAMES[:3], settings)
    assert t == 2
    still = [patchify(np.stack([frame, frame]), settings)[0].reshape(h * w, 3, 2, 14, 14) for frame in FRAMES[:3]]
    layout = pixels.reshape(t, h * w, 3, 2, 14, 14)
    assert np.array_equal(layout[0, :, :, 0], still[0][:, :, 0]) and np.array_equal(layout[0, :, :, 1], still[1][:, :, 0])
    assert np.array_equal(layout[1, :, :, 0], still[2][:, :, 0]) and np.array_equal(layout[1, :, :, 1], still[2][:, :, 0])


def test_sampling_rules():
    assert sample_indices(12, 6.0, num_frames=4) == [0, 3, 6, 9]
    assert sample_indices(12, 6.0, fps=2) == [0, 3, 6, 9]  # 2 s at 2 fps
    assert sample_indices(5, 1.0) == [0, 1, 2, 3, 4]
    with pytest.raises(LongCtxError, match="sampling leaves no frames"):
        sample_indices(12, 6.0, fps=0.1)
    with pytest.raises(LongCtxError, match="sampling leaves no frames"):
        sample_indices(12, 6.0, num_frames=0)


def test_pyav_round_trip_and_bad_files(tmp_path, tiny_vl):
    av = pytest.importorskip("av")
    path = str(tmp_path / "clip.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=6)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in FRAMES:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:48, :64]), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames, fps = read_frames(path)
    assert frames.shape == (12, 48, 64, 3) and fps == 6
    video = load_video(path, tiny_vl[0], num_frames=8)
    assert video.grid[0] == 4 and video.seconds_per_patch == pytest.approx(2 / 4)
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(LongCtxError, match="cannot read video"):
        read_frames(str(tmp_path / "junk.mp4"))
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(LongCtxError, match="cannot read video|no frames|no video stream"):
        read_frames(str(tmp_path / "empty.mp4"))
    with pytest.raises(LongCtxError, match="has no frames"):
        load_video([], tiny_vl[0])


@pytest.mark.parametrize("world", [2, 3])
def test_frame_parallel_encoder_equals_single_process(tiny_vl, world):
    path, model = tiny_vl
    video = load_video(FRAMES, path)  # 6 temporal patches
    pixels = torch.tensor(video.pixels)
    with torch.inference_mode():
        reference = encode_video(model.model.visual, pixels, video.grid, Comm())
        hub = {"world": world, "barrier": threading.Barrier(world, timeout=60), "slots": [None] * world}
        results = [None] * world

        def work(rank):
            with torch.inference_mode():
                results[rank] = encode_video(model.model.visual, pixels, video.grid, ThreadComm(rank, hub))

        threads = [threading.Thread(target=work, args=(rank,)) for rank in range(world)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for result in results:
        assert float((result - reference).norm() / reference.norm()) <= 1e-5


def test_more_workers_than_temporal_patches_is_one_error():
    assert frame_shares(5, 2) == [(0, 3), (3, 5)]
    with pytest.raises(LongCtxError, match="3 temporal patches .* fewer than the 4 workers"):
        frame_shares(3, 4)
