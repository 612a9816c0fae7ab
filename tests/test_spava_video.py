"""Video input for Spava on a tiny random Qwen2.5-VL (fp32): frames (PyAV or arrays), sampling,
Qwen2-VL patches, the frame-parallel vision encoder against the single-process one, the
engine's video path (dense against transformers' own forward and generate; burst, spava's
exact cases and apb's against dense on simulated workers), the CLI end to end on local workers
and bad video input. Runtime on 2 shared cores: about 2 minutes (the two CLI runs on 2 and 4
workers are most of it)."""

import os
import threading

import numpy as np
import pytest
import torch

from approx_reference import TOLERANCE as REFERENCE_TOLERANCE
from approx_reference import Spy, apb_errors, spava_errors
from helpers import ThreadComm, relative_error, run_cli, run_workers
from longctx.comm import ProcessGroupComm
from longctx.config import RunConfig
from longctx.engine import Engine, Request
from longctx.errors import LongCtxError
from longctx.families.qwen2_5_vl import (encode_video, frame_shares, load_video, patchify, processor_settings,
                                         video_prompt)
from longctx.models import load_model, load_tokenizer
from longctx.models.tiny import make_tiny_model
from longctx.request import Session
from longctx.video import read_frames, sample_indices

FRAMES = np.random.default_rng(0).integers(0, 256, (12, 50, 70, 3), dtype=np.uint8)
TOLERANCE = 1e-4


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
    """As transformers' Qwen2VLVideoProcessor.sample_frames: a frame count rounded to frame pairs;
    fps sampling at least min_frames (4) and at most max_frames, floored to frame pairs."""
    assert sample_indices(12, 6.0, num_frames=4) == [0, 3, 6, 9]
    assert sample_indices(12, 6.0, fps=2) == [0, 3, 6, 9]  # 2 s at 2 fps
    assert sample_indices(5, 1.0) == [0, 1, 2, 3, 4]
    assert sample_indices(12, 6.0, fps=0.1) == [0, 3, 6, 9]  # 0.2 frames asked, the minimum of 4 kept
    assert len(sample_indices(600, 30.0, fps=30, max_frames=11)) == 10  # at most 11, in frame pairs
    assert len(sample_indices(3, 1.0, fps=1)) == 2  # the video's own 3 frames, in frame pairs
    with pytest.raises(LongCtxError, match="sampling leaves no frames"):
        sample_indices(12, 6.0, num_frames=0)


def test_processor_settings_are_looked_up_where_transformers_looks(tmp_path):
    """processor_config.json's "video_processor" section, then video_preprocessor_config.json,
    then preprocessor_config.json (`size` edges read as pixel bounds)."""
    import json

    def write(name, content):
        with open(tmp_path / name, "w") as handle:
            json.dump(content, handle)

    write("preprocessor_config.json", {"max_pixels": 1000, "min_frames": 6})
    assert processor_settings(str(tmp_path))["max_pixels"] == 1000
    assert processor_settings(str(tmp_path))["min_frames"] == 6
    write("video_preprocessor_config.json", {"size": {"shortest_edge": 100, "longest_edge": 2000}})
    assert (processor_settings(str(tmp_path))["min_pixels"], processor_settings(str(tmp_path))["max_pixels"]) == (100, 2000)
    write("processor_config.json", {"image_processor": {"max_pixels": 5}})  # no video section: not this file
    assert processor_settings(str(tmp_path))["max_pixels"] == 2000
    write("processor_config.json", {"video_processor": {"max_pixels": 3000, "max_frames": 64}})
    settings = processor_settings(str(tmp_path))
    assert (settings["max_pixels"], settings["max_frames"], settings["min_frames"]) == (3000, 64, 4)
    (tmp_path / "processor_config.json").write_text("{not json")
    with pytest.raises(LongCtxError, match="cannot read the processor settings"):
        processor_settings(str(tmp_path))


def test_per_request_bounds_and_the_default_rate_of_python_frames(tiny_vl):
    """--max-pixels shrinks the frames, --max-frames caps fps sampling, and frames given from
    Python without a rate are taken at 2 fps (qwen-vl-utils' default): a frame pair spans 1 s."""
    frames = np.random.default_rng(0).integers(0, 255, (40, 56, 56, 3), dtype=np.uint8)
    plain = load_video(frames, tiny_vl[0])
    assert plain.seconds_per_patch == pytest.approx(1.0) and plain.grid == (20, 4, 4)
    small = load_video(frames, tiny_vl[0], max_pixels=28 * 28)
    assert small.grid == (20, 2, 2)
    capped = load_video(frames, tiny_vl[0], fps=2, max_frames=8)
    assert capped.grid[0] == 4 and capped.seconds_per_patch == pytest.approx(40 / 8)
    with pytest.raises(LongCtxError, match="--max-frames must be at least 1"):
        load_video(frames, tiny_vl[0], fps=2, max_frames=0)


def write_video(path, frames, rate=6):
    """Write `frames` [T, 48, 64, 3] uint8 to an MPEG-4 file with PyAV; returns `path`."""
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_pyav_round_trip_and_bad_files(tmp_path, tiny_vl):
    pytest.importorskip("av")
    path = write_video(str(tmp_path / "clip.mp4"), FRAMES[:, :48, :64])
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
        reference = encode_video(model.model.visual, pixels, video.grid, ProcessGroupComm())
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


def test_each_worker_receives_only_its_frames_as_uint8(tiny_vl):
    """A frame-parallel request gives worker r only the uint8 frames of its temporal patches
    (their float32 patches are the whole video's rows, bit for bit); the local launcher's
    message to each worker is then about an eighth (3 workers) of the whole float32 video."""
    from launch.local import _messages

    path, _ = tiny_vl
    video = load_video(FRAMES, path)  # 6 temporal patches
    doc, question = video_prompt(load_tokenizer(path), video.grid, "what moves?")
    request = Session(RunConfig(model=path, method="spava", nproc=3)).prepare_ids(doc, question, media=video)
    parts = [request.for_rank(rank).media for rank in range(3)]
    assert [part.patch_range for part in parts] == [(0, 2), (2, 4), (4, 6)]
    assert all(part.frames.dtype == np.uint8 for part in parts)
    assert np.array_equal(np.concatenate([part.pixels for part in parts]), video.pixels)
    whole_float = video.pixels.nbytes
    sizes = [len(message) for message in _messages(request, False, 3)]
    assert max(sizes) < whole_float / 12 + 4096, (sizes, whole_float)  # a third of the frames, a quarter of the bytes
    whole = Session(RunConfig(model=path, method="spava", nproc=3, frame_parallel=False)).prepare_ids(
        doc, question, media=video)
    assert whole.media_shares is None and whole.for_rank(2).media.patch_range == (0, 6)  # every worker encodes all


def test_more_workers_than_temporal_patches_is_one_error():
    assert frame_shares(5, 2) == [(0, 3), (3, 5)]
    with pytest.raises(LongCtxError, match="3 temporal patches .* fewer than the 4 workers"):
        frame_shares(3, 4)


@pytest.fixture(scope="module")
def video_request(tiny_vl):
    """(model dir, model loaded for the engine, doc_ids, query_ids, VideoPatches): 6 temporal
    patches of 4 x 6 patches, 39 document tokens."""
    path = tiny_vl[0]
    video = load_video(FRAMES, path, source_fps=4)
    doc, question = video_prompt(load_tokenizer(path), video.grid, "what moves?")
    return path, load_model(path, torch.device("cpu"), torch.float32), doc, question, video


def dense_video(path, model, doc, question, video, max_new_tokens=6):
    """The single-process dense engine's result on a video request (the reference)."""
    engine = Engine(model, ProcessGroupComm(), RunConfig(model=path, method="dense", nproc=1), torch.device("cpu"))
    return engine.run(Request(doc, question, max_new_tokens, "dense", True, (), video))


def run_video(video_request, method, world, **options):
    path, model, doc, question, video = video_request
    config = RunConfig(model=path, method=method, **options)
    return run_workers(model, config, Request(doc, question, 6, method, True, (), video), world)


def test_dense_engine_equals_transformers_own_forward(video_request, tiny_vl):
    """Embedding replacement and M-RoPE (table + decode delta) against Qwen2_5_VLForConditionalGeneration
    run by transformers end to end (its processor-free inputs, SDPA, its own generate)."""
    path, model, doc, question, video = video_request
    reference_model = tiny_vl[1]
    result = dense_video(path, model, doc, question, video)
    ids = torch.tensor([doc + question])
    inputs = dict(input_ids=ids, pixel_values_videos=torch.tensor(video.pixels), video_grid_thw=torch.tensor([video.grid]),
                  second_per_grid_ts=torch.tensor([video.seconds_per_patch]),
                  mm_token_type_ids=2 * (ids == reference_model.config.video_token_id).int())
    with torch.inference_mode():
        output = reference_model(**inputs, output_hidden_states=True)
        generated = reference_model.generate(**inputs, max_new_tokens=6, do_sample=False)
    hidden = output.hidden_states[-1][0]
    ours = torch.cat([result.doc_hidden, result.query_hidden])
    assert float((ours - hidden).norm() / hidden.norm()) <= 1e-5
    assert result.tokens == generated[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("method,world,options", [
    ("burst", 2, {}),
    ("burst", 3, {"layout": "contiguous"}),
    ("spava", 1, {}),
    ("spava", 2, {"anchor_len": 0, "passing_len": 10**6}),
    ("spava", 4, {"anchor_len": 0, "passing_len": 10**6, "frame_parallel": 0}),
    ("apb", 2, {"anchor_len": 0, "passing_ratio": 1.0}),
])
def test_exact_methods_on_video_equal_dense(video_request, method, world, options):
    """Exact configurations on video: every worker's rows get their own tokens' embeddings and M-RoPE."""
    reference = dense_video(*video_request)
    result = run_video(video_request, method, world, **options)
    assert relative_error(result, reference) <= TOLERANCE
    assert result.tokens == reference.tokens


@pytest.mark.parametrize("method,world,options", [("spava", 3, {}), ("spava", 2, {"anchor_len": 6, "passing_len": 3}),
                                                   ("apb", 2, {})])
def test_approximate_runs_on_video_match_the_independent_reference(video_request, method, world, options):
    """The approximate default sizes (spava: anchor n/64, passing n/128, nothing at 39 tokens;
    apb: l_b/4, l_b/8, the question in the anchor at positions 0..l_a-1 of the M-RoPE table) and
    spava with an anchor and passing: every host's attention, layer by layer, equals the
    independent reference (tests/approx_reference.py) within 1e-5. A video request's rows are
    global indices (their embeddings and M-RoPE come from them)."""
    doc, question = video_request[2], video_request[3]
    with Spy() as spy:
        result = run_video(video_request, method, world, **options)
    indices = list(range(len(doc) + len(question)))
    errors = (spava_errors if method == "spava" else apb_errors)(spy, indices[: len(doc)], indices[len(doc) :])
    assert max(errors.values()) <= REFERENCE_TOLERANCE, errors
    assert len(result.tokens) == 6


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 16-frame synthetic MPEG-4 clip written with PyAV (8 temporal patches after sampling)."""
    pytest.importorskip("av")
    frames = np.random.default_rng(1).integers(0, 256, (16, 48, 64, 3), dtype=np.uint8)
    return write_video(str(tmp_path_factory.mktemp("video") / "clip.mp4"), frames, rate=4)


@pytest.mark.parametrize("nproc", [2, 4])
def test_cli_answers_a_video_with_spava_on_local_workers(tiny_vl, clip, nproc):
    """End to end: PyAV decode, sampling, frame-parallel encoding and spava prefill on `nproc`
    local worker processes; the answer equals dense's on one worker (6 tokens; the sizes make
    spava exact: no anchor, every key passed)."""
    import json

    common = ("generate", "--model", tiny_vl[0], "--video", clip, "--frames", "16", "--question", "what moves?",
              "--max-new-tokens", "6", "--json")
    spava = run_cli(*common, "--method", "spava", "--nproc", str(nproc), "--anchor-len", "0", "--passing-len",
                    "100000", timeout=400)
    assert spava.returncode == 0, spava.stderr
    result = json.loads(spava.stdout)
    assert result["method"] == "spava" and result["nproc"] == nproc and len(result["tokens"]) == 6
    assert result["doc_tokens"] == 3 + 8 * 4  # BOS, vision start/end, 8 temporal patches of 2 x 2 merged tokens
    video = load_video(clip, tiny_vl[0], num_frames=16)
    doc, question = video_prompt(load_tokenizer(tiny_vl[0]), video.grid, "what moves?")
    reference = dense_video(tiny_vl[0], load_model(tiny_vl[0], torch.device("cpu"), torch.float32), doc, question,
                            video)
    assert result["tokens"] == reference.tokens




@pytest.mark.parametrize("case,needle", [
    ("junk", "cannot read video"),
    ("empty", "cannot read video"),
    ("missing", "does not exist"),
    ("no_frames", "sampling leaves no frames"),
    ("workers", "8 temporal patches (frame pairs) after sampling, fewer than the 9 workers"),
    ("text_model", "a video needs a video-language model (qwen2_5_vl)"),
    ("no_video", "this is a video-language model (Qwen2.5-VL): give a video"),
    ("pixels_without_video", "frame sampling (--frames / --fps / --max-pixels / --max-frames) needs a video"),
    ("unsupported", "a multimodal family longctx does not support; the supported multimodal families are qwen2_5_vl"),
])
def test_bad_video_input_is_one_error_line(tiny_vl, tiny_model, clip, tmp_path, capsys, case, needle):
    """Refused on the driver before any worker starts (so none can be left): the CLI's `main`
    in this process (no interpreter start-up per case) prints one line and returns status 2."""
    import json

    from longctx.cli import main

    video, model, extra = clip, tiny_vl[0], ()
    if case == "junk":
        video = str(tmp_path / "junk.mp4")
        open(video, "wb").write(b"not a video at all")
    elif case == "empty":
        video = str(tmp_path / "empty.mp4")
        open(video, "wb").close()
    elif case == "missing":
        video = str(tmp_path / "nope.mp4")
    elif case == "no_frames":
        extra = ("--frames", "0")
    elif case == "workers":
        extra = ("--nproc", "9", "--anchor-len", "0")
    elif case == "text_model":
        model = tiny_model("llama")
    elif case == "unsupported":
        model = str(tmp_path)
        with open(os.path.join(model, "config.json"), "w") as handle:
            json.dump({"model_type": "llava"}, handle)
    elif case == "pixels_without_video":
        extra = ("--max-pixels", "1000")
    if case in ("no_video", "pixels_without_video"):
        doc = tmp_path / "doc.txt"
        doc.write_text("a document")
        source = ("--doc", str(doc))
    else:
        source = ("--video", video)
    capsys.readouterr()  # drop what writing the fixtures' models printed
    assert main(["generate", "--model", model, "--method", "spava", *source, "--question", "what?", *extra]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("longctx: error:") and needle in lines[0], captured.err
    assert captured.out == ""
