"""The VNBench-style video needle generator (longctx.eval.video_needles): seeded, the length it
promises, needles where and what the sample says, answers that follow from the needles, a
haystack that never looks like a needle, one-line errors. About 5 s."""

import numpy as np
import pytest

from longctx.eval import vocab
from longctx.eval.video_needles import (
    COLOURS, PROMPT_SPECIALS, SYMBOLS, VIDEO_TASKS, answer_words, make_video_sample, make_video_samples, video_words)


def saturation(pixels):
    """HSV saturation of uint8 RGB pixels [..., 3] as floats 0..1."""
    pixels = pixels.astype(np.float32)
    high, low = pixels.max(-1), pixels.min(-1)
    return np.where(high > 0, (high - low) / np.maximum(high, 1), 0)


@pytest.mark.parametrize("task", VIDEO_TASKS)
def test_seeded_and_the_promised_length(task):
    first, again = make_video_sample(task, 300, seed=3, index=2), make_video_sample(task, 300, seed=3, index=2)
    assert np.array_equal(first.frames, again.frames) and first.question == again.question
    assert not np.array_equal(first.frames, make_video_sample(task, 300, seed=3, index=1).frames)
    pairs = len(first.frames) // 2
    assert first.length == PROMPT_SPECIALS + pairs + len(vocab.words_of(first.question)) == 300
    assert first.frames.shape[1:] == (28, 28, 3) and first.frames.dtype == np.uint8
    assert first.question.endswith("answer :") and first.answer in answer_words()
    assert set(vocab.words_of(first.question)) <= set(video_words())


def test_needles_show_exactly_on_their_frames():
    """A needle's colour (saturated) is on its event frames and on no other frame."""
    for sample in make_video_samples("video_counting", 400, 6, seed=1):
        shown = {}
        for needle in sample.needles:
            for frame in range(needle.start, needle.start + 3):
                shown[frame] = needle.colour
        for index, frame in enumerate(sample.frames):
            vivid = saturation(frame) > 0.6
            assert vivid.any() == (index in shown), (sample.index, index)
            if index in shown:
                colour = np.array(COLOURS[shown[index]], np.float32)
                hue = frame[vivid].astype(np.float32)
                assert np.allclose(hue / hue.max(-1, keepdims=True), colour / colour.max(), atol=0.02)


def test_haystack_stays_muted():
    """Away from needles no pixel is as saturated as a needle (the distinct-event promise)."""
    sample = make_video_sample("video_retrieval", 3000, seed=5)
    needle = sample.needles[0]
    plain = np.delete(sample.frames, range(needle.start, needle.start + 3), axis=0)
    assert saturation(plain).max() < 0.5


def test_answers_follow_from_the_needles():
    for sample in make_video_samples("video_ordering", 500, 20, seed=2):
        colours = [needle.colour for needle in sample.needles]
        assert 2 <= len(colours) <= 4 and len(set(colours)) == len(colours)
        words = sample.question.split()
        named = [words[5], words[7]]
        assert set(named) <= set(colours) and named[0] != named[1]
        assert sample.answer == min(named, key=colours.index)
        starts = [needle.start for needle in sample.needles]
        assert starts == sorted(starts) and all(b - a >= 6 for a, b in zip(starts, starts[1:]))
    counts = [len(s.needles) for s in make_video_samples("video_counting", 500, 30, seed=2)]
    assert set(counts) == {1, 2, 3, 4, 5}
    for sample in make_video_samples("video_counting", 500, 5, seed=2):
        assert sample.answer == str(len(sample.needles))
    for sample in make_video_samples("video_retrieval", 500, 10, seed=2):
        (needle,) = sample.needles
        expected = needle.colour if "colour" in sample.question else needle.symbol
        assert sample.answer == expected and (expected in COLOURS or expected in SYMBOLS)


def test_settings_and_bad_input():
    assert len(make_video_sample("video_counting", 300, num_needles=3).needles) == 3
    assert len(make_video_sample("video_ordering", 300, num_needles=(4, 4)).needles) == 4
    big = make_video_sample("video_retrieval", 300, frame_size=56)
    assert big.frames.shape[1:3] == (56, 56) and big.length == PROMPT_SPECIALS + 4 * (len(big.frames) // 2) + 8
    with pytest.raises(ValueError, match="unknown video task"):
        make_video_sample("video_recall", 300)
    with pytest.raises(ValueError, match="no room"):
        make_video_sample("video_counting", 20, num_needles=5)
    with pytest.raises(ValueError, match="needs 2..6 needles"):
        make_video_sample("video_ordering", 300, num_needles=1)
    with pytest.raises(ValueError, match="multiple of 28"):
        make_video_sample("video_retrieval", 300, frame_size=30)
