"""Videos through every entry a text request takes, on a tiny random Qwen2.5-VL (answers are
noise): `longctx eval` on the video needle tasks (clips through the family adapter, HF SDPA's own
forward of each clip as the baseline, exact methods answering like dense, first-word scoring),
`longctx compare --video` and the torchrun entry with per-request sampling options."""

import json
import os

import pytest

from longctx.errors import LongCtxError
from longctx.eval.harness import evaluate
from longctx.eval.tasks import is_correct, make_sample
from longctx.models.tiny import make_tiny_model


@pytest.fixture(scope="module")
def tiny_vl_28(tmp_path_factory):
    """A random Qwen2.5-VL whose processor keeps 28 x 28 frames (one token per frame pair, as the
    tasks count)."""
    path = make_tiny_model(str(tmp_path_factory.mktemp("vl28")), "qwen2_5_vl", seed=2)
    config = os.path.join(path, "preprocessor_config.json")
    with open(config) as handle:
        settings = json.load(handle)
    settings.update(min_pixels=28 * 28, max_pixels=28 * 28)
    with open(config, "w") as handle:
        json.dump(settings, handle)
    return path


@pytest.mark.slow
def test_video_tasks_through_eval(tiny_vl_28):
    methods = "dense,burst,spava[anchor-len=0,passing-len=100000],spava"
    report = evaluate(tiny_vl_28, "video_retrieval,video_counting[num-needles=2]", 160, nproc=2, methods=methods,
                      samples=2, seed=3).to_dict()
    assert report["tasks"] == ["video_retrieval", "video_counting[num-needles=2]"]
    for task in report["tasks"]:
        assert report["prompt_tokens"][task] == [160, 160]  # the clip fills the requested length
        predictions = report["predictions"][task]
        assert predictions["burst"] == predictions["dense"]  # exact methods answer like dense
        assert predictions["spava[anchor-len=0,passing-len=100000]"] == predictions["dense"]
    assert report["expected"]["video_counting[num-needles=2]"] == ["2", "2"]
    assert report["hf_token_disagreements"]["dense"] == 0  # HF's own forward of the clip: same next token
    assert report["hf_sdpa"]["mean_s"] > 0 and report["workers"]["dense"] == 1


def test_first_word_scoring_and_modality_errors(tiny_model):
    sample = make_sample("video_retrieval", 120, 0, 0)
    assert is_correct(f" {sample.answer} and more", sample) and not is_correct(f" more {sample.answer}", sample)
    with pytest.raises(LongCtxError, match="a video needs a video-language model"):
        evaluate(tiny_model("llama"), "video_counting", 120, nproc=2, methods="dense", samples=1, baseline=False)


@pytest.mark.slow
def test_compare_takes_a_video(tiny_vl_28):
    """`longctx compare --video`: the methods against dense on a clip (exact settings: the same
    tokens, hidden states within float32 error), HF SDPA timed on the same clip."""
    import numpy as np

    from longctx.compare import compare_methods
    from longctx.config import RunConfig
    from longctx.request import Prompt

    frames = np.random.default_rng(5).integers(0, 256, (40, 28, 28, 3), dtype=np.uint8)
    video = Prompt(question="how many symbols were shown ? answer :", video=frames, max_frames=24, fps=1.0)
    config = RunConfig.for_methods(["burst", "spava"], model=tiny_vl_28, nproc=2, anchor_len=0, passing_len=10**6)
    report = compare_methods(config, ["burst", "spava"], length=0, max_new_tokens=3, baseline_repeats=1, video=video)
    assert report["media"] == "video 10x2x2 patches" and report["length"] == 13  # 20 frames at 1 of 2 fps
    for row in report["results"]:
        assert row["tokens_match"] and row["hidden_rel_err"] < 1e-5, row
    assert report["hf_sdpa"]["tokens"] == report["length"] + report["query_len"]


@pytest.mark.slow
def test_torchrun_entry_answers_a_video_like_generate(tiny_vl_28, tmp_path):
    """The torchrun entry takes --video with --fps / --max-frames / --max-pixels as `generate`
    does: spava (exact settings) on 2 torchrun ranks gives dense's tokens on one local worker."""
    import shutil
    import subprocess
    import sys

    import numpy as np

    from helpers import REPO, run_cli

    av = pytest.importorskip("av")
    clip = str(tmp_path / "clip.mp4")
    with av.open(clip, "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 56, 56, "yuv420p"
        for frame in np.random.default_rng(1).integers(0, 256, (40, 56, 56, 3), dtype=np.uint8):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    request = ["--model", tiny_vl_28, "--video", clip, "--fps", "2", "--max-frames", "12", "--max-pixels", "784",
               "--question", "what?", "--max-new-tokens", "3", "--json"]
    dense = run_cli("generate", *request, "--method", "dense")
    assert dense.returncode == 0, dense.stderr[-2000:]
    expected = json.loads(dense.stdout.strip().splitlines()[-1])
    assert expected["doc_tokens"] == 3 + 6  # 12 frames of 28 x 28: 6 frame pairs, one token each
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "launch.torchrun", *request,
                           "--method", "spava", "--anchor-len", "0", "--passing-len", "100000"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO),
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    assert payload["tokens"] == expected["tokens"] and payload["nproc"] == 2
