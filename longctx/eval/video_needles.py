"""VNBench-style synthetic video needle tasks, deterministic and seeded.

A sample is a synthetic clip (frames [T, H, W, 3] uint8 at `fps` frames per second) and a
question about the **needles** drawn into it: a symbol (a filled square, circle or triangle, a
cross, or a digit 0-9) in one of six saturated colours, drawn over `event_frames` (default 3)
consecutive frames (VNBench's "edit" needles: drawn on the frame, a short event). The haystack
is a muted, slowly changing scene: a two-colour gradient whose direction drifts, one or two
soft blobs gliding across it, pixel noise, and a scene cut every 40-200 frames; its pixels
stay below 0.5 saturation (HSV), the needles' are near 1, so a needle is a distinct event,
not a haystack accident.

Three tasks (VNBench's three kinds), answers in a small closed vocabulary (`answer_words`):

``video_retrieval``
    One needle; the question asks its colour ("what colour was the symbol ?") or its symbol
    ("which symbol was shown ?"), one or the other at random. Answer: a colour or a symbol.
``video_ordering``
    ``num_needles`` (default 2-4 at random) needles of distinct colours; the question names
    two of them in random order ("which colour came first , red or blue ?"). Answer: the
    colour of the earlier one.
``video_counting``
    ``num_needles`` (default 1-5 at random) needles; "how many symbols were shown ?".
    Answer: the count.

Every question ends with "answer :", so a model's continuation is the answer word; it is
scored on its first word (`longctx.eval.tasks.is_correct`). A needle
starts at a random frame, needles at least `2 * event_frames` frames apart and clear of the
clip's first and last frames. ``length`` is the prompt's token count as a Qwen2.5-VL video
prompt (`longctx.families.qwen2_5_vl.video_prompt`): BOS, `<|vision_start|>`, one token per 28 x 28
pixels of each frame pair (`tokens_per_pair`), `<|vision_end|>`, the question; the clip gets
as many frame pairs as fill the requested length. The question's tokens are counted with the
given tokenizer, or as words (what the word-level tokenizer of `longctx.eval.tokenizer` makes).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from longctx.eval import vocab

VIDEO_TASKS = ["video_retrieval", "video_ordering", "video_counting"]

COLOURS = {"red": (235, 30, 30), "green": (30, 220, 40), "blue": (40, 60, 240), "yellow": (240, 230, 20),
           "magenta": (230, 40, 230), "cyan": (30, 225, 230)}
SHAPES = ["square", "circle", "triangle", "cross"]
DIGITS = [str(digit) for digit in range(10)]
SYMBOLS = SHAPES + DIGITS
COUNTS = (1, 5)  # video_counting's default needle counts
ORDER_NEEDLES = (2, 4)  # video_ordering's default needle counts

Q_COLOUR = "what colour was the symbol ? answer :"
Q_SYMBOL = "which symbol was shown ? answer :"
Q_ORDER = "which colour came first , {first} or {second} ? answer :"
Q_COUNT = "how many symbols were shown ? answer :"

PROMPT_SPECIALS = 3  # BOS, <|vision_start|>, <|vision_end|>
TILE = 28  # pixels per language-model token side of a Qwen2.5-VL frame (patch 14 x merge 2)

# 5 x 7 bitmaps of the digits, one string of 7 rows of 5 columns each
_GLYPHS = {
    "0": "01110 10001 10011 10101 11001 10001 01110", "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111", "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010", "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110", "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110", "9": "01110 10001 10001 01111 00001 00010 01100",
}


@dataclass(frozen=True)
class Needle:
    """One needle: first frame `start`, `colour` (a COLOURS name), `symbol` (a SYMBOLS word)."""

    start: int
    colour: str
    symbol: str


@dataclass
class VideoSample:
    """One video question: `frames` [T, H, W, 3] uint8 at `fps`, the `question` (ending with
    "answer :"), the expected `answer` word, the `needles` in time order, and `length`, the
    prompt's tokens (module docstring)."""

    task: str
    frames: np.ndarray
    fps: float
    question: str
    answer: str
    needles: list = field(default_factory=list)
    length: int = 0
    seed: int = 0
    index: int = 0

    @property
    def answers(self):
        """[answer] (the scorer's interface, as `longctx.eval.tasks.Sample.answers`)."""
        return [self.answer]


def answer_words():
    """Every answer a task can expect: colours, symbols, counts (sorted, no duplicates)."""
    return sorted(set(COLOURS) | set(SYMBOLS) | {str(count) for count in range(1, 10)})


def video_words():
    """Every word or punctuation token of the questions and answers (for a word-level tokenizer)."""
    words = set(answer_words())
    for text in (Q_COLOUR, Q_SYMBOL, Q_ORDER, Q_COUNT):
        words.update(vocab.words_of(text.replace("{first}", " ").replace("{second}", " ")))
    return sorted(words)


def tokens_per_pair(frame_size):
    """Language-model tokens of one frame pair of `frame_size` x `frame_size` pixels (a multiple of 28)."""
    if frame_size < TILE or frame_size % TILE:
        raise ValueError(f"frame_size must be a positive multiple of {TILE} (got {frame_size})")
    return (frame_size // TILE) ** 2


# --------------------------------------------------------------------------- drawing

def _muted(rng):
    """An RGB colour (float, 0..255) of saturation <= 0.3: the haystack's palette."""
    hue, saturation, value = rng.random(), 0.3 * rng.random(), 0.25 + 0.55 * rng.random()
    channel = np.array([abs((hue * 6 + shift) % 6 - 3) - 1 for shift in (0, 4, 2)]).clip(0, 1)
    return 255 * value * (1 - saturation + saturation * channel)


def haystack(rng, frames, size):
    """Frames [frames, size, size, 3] uint8 of the muted scene (module docstring)."""
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    ys, xs = np.meshgrid(grid, grid, indexing="ij")
    video = np.empty((frames, size, size, 3), np.float32)
    start = 0
    while start < frames:
        stop = min(frames, start + rng.randint(40, 200))
        count = stop - start
        time = np.arange(count, dtype=np.float32)[:, None, None]
        angle = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.02, 0.02) * time
        ramp = 0.5 + 0.5 * (np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5)) * 1.4
        low, high = _muted(rng), _muted(rng)
        scene = low + (high - low) * ramp[..., None]
        for _ in range(rng.randint(1, 2)):
            x0, y0, dx, dy = rng.random(), rng.random(), rng.uniform(-0.01, 0.01), rng.uniform(-0.01, 0.01)
            cx, cy = (x0 + dx * time) % 1.0, (y0 + dy * time) % 1.0
            radius = rng.uniform(0.12, 0.3)
            blob = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / radius**2)[..., None]
            scene = scene * (1 - 0.8 * blob) + _muted(rng) * 0.8 * blob
        video[start:stop] = scene
        start = stop
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 6, video.shape).astype(np.float32)
    video = np.clip(video + noise, 0, 255)
    grey = video.mean(-1, keepdims=True)  # noise on dark pixels must not make them vivid:
    spread = video.max(-1, keepdims=True) - video.min(-1, keepdims=True)  # saturation <= ~0.4
    video = grey + (video - grey) * np.minimum(1.0, 0.4 * video.max(-1, keepdims=True) / np.maximum(spread, 1e-3))
    return np.clip(video, 0, 255).astype(np.uint8)


def symbol_mask(rng, symbol, size):
    """A boolean mask [size, size] of `symbol` at a random place and scale (glyphs 2x or 3x for
    large frames, shapes 10-16 pixels across at 28 pixels)."""
    mask = np.zeros((size, size), bool)
    if symbol in _GLYPHS:
        scale = max(2, size // 14)
        glyph = np.array([[c == "1" for c in row] for row in _GLYPHS[symbol].split()])
        glyph = glyph.repeat(scale, 0).repeat(scale, 1)
        top, left = rng.randint(1, size - glyph.shape[0] - 1), rng.randint(1, size - glyph.shape[1] - 1)
        mask[top:top + glyph.shape[0], left:left + glyph.shape[1]] = glyph
        return mask
    side = rng.randint(10 * size // 28, 16 * size // 28)
    top, left = rng.randint(1, size - side - 1), rng.randint(1, size - side - 1)
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    half = side / 2
    if symbol == "square":
        shape = np.ones((side, side), bool)
    elif symbol == "circle":
        shape = (ys - half) ** 2 + (xs - half) ** 2 <= half**2
    elif symbol == "triangle":
        shape = np.abs(xs - half) <= ys / 2
    else:  # cross
        stroke = max(2, side // 4)
        shape = (np.abs(xs - half) < stroke / 2 + 0.5) | (np.abs(ys - half) < stroke / 2 + 0.5)
    mask[top:top + side, left:left + side] = shape
    return mask


def draw_needle(rng, frames, needle, event_frames):
    """Draw `needle` into `frames` (in place) on its `event_frames` frames, at one place."""
    mask = symbol_mask(rng, needle.symbol, frames.shape[1])
    colour = np.array(COLOURS[needle.colour], np.float32) * rng.uniform(0.85, 1.0)
    for frame in frames[needle.start:needle.start + event_frames]:
        frame[mask] = colour.astype(np.uint8)


def needle_starts(rng, count, frames, event_frames):
    """`count` sorted start frames, at least 2 * event_frames apart, inside [2, frames - event_frames - 2]."""
    gap, low, high = 2 * event_frames, 2, frames - event_frames - 2
    room = high - low - gap * (count - 1)
    if room < 0:
        raise ValueError(f"a clip of {frames} frames has no room for {count} needles")
    offsets = sorted(rng.randint(0, room) for _ in range(count))
    return [low + offset + gap * position for position, offset in enumerate(offsets)]


# --------------------------------------------------------------------------- samples

def _question_tokens(text, tokenizer):
    if tokenizer is None:
        return len(vocab.words_of(text))
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _draw_count(rng, value, default):
    """`value` (an int, or a (low, high) pair drawn from) or the task's default range."""
    low, high = (value, value) if isinstance(value, int) else (value or default)
    return rng.randint(low, high)


def make_video_sample(task, length_tokens, seed=0, index=0, tokenizer=None, num_needles=None, frame_size=28,
                      event_frames=3, fps=2.0):
    """A seeded VideoSample of `task` whose prompt is about `length_tokens` tokens.

    `num_needles` is a count or a (low, high) range for ordering and counting (retrieval has
    one); `frame_size` the frames' side in pixels (a multiple of 28: one token per 28 x 28 of a
    frame pair); `event_frames` how long a needle shows; `fps` the clip's frame rate (2, the
    rate Qwen2.5-VL's tooling samples video at). ValueError on an unknown task or a length too
    short for the needles.
    """
    if task not in VIDEO_TASKS:
        raise ValueError(f"unknown video task {task!r}; choose one of {', '.join(VIDEO_TASKS)}")
    if event_frames < 1:
        raise ValueError(f"event_frames must be at least 1 (got {event_frames})")
    rng = random.Random(f"{task}/{seed}/{index}")
    colours = list(COLOURS)
    if task == "video_retrieval":
        count = 1
    elif task == "video_ordering":
        count = _draw_count(rng, num_needles, ORDER_NEEDLES)
        if not 2 <= count <= len(colours):
            raise ValueError(f"video_ordering needs 2..{len(colours)} needles (got {count})")
    else:
        count = _draw_count(rng, num_needles, COUNTS)
        if count < 1:
            raise ValueError(f"video_counting needs at least 1 needle (got {count})")
    chosen = rng.sample(colours, count) if task == "video_ordering" else [rng.choice(colours) for _ in range(count)]
    symbols = [rng.choice(SYMBOLS) for _ in range(count)]
    if task == "video_retrieval":
        asks_colour = rng.random() < 0.5
        question, answer = (Q_COLOUR, chosen[0]) if asks_colour else (Q_SYMBOL, symbols[0])
    elif task == "video_ordering":
        first, second = sorted(rng.sample(range(count), 2))
        pair = [chosen[first], chosen[second]]
        rng.shuffle(pair)
        question, answer = Q_ORDER.format(first=pair[0], second=pair[1]), chosen[first]
    else:
        question, answer = Q_COUNT, str(count)
    per_pair = tokens_per_pair(frame_size)
    pairs = (length_tokens - PROMPT_SPECIALS - _question_tokens(question, tokenizer)) // per_pair
    frames = 2 * pairs
    starts = needle_starts(rng, count, frames, event_frames) if pairs > 0 else None
    if starts is None:
        raise ValueError(f"{length_tokens} tokens leave no frames for {task}")
    video = haystack(rng, frames, frame_size)
    needles = [Needle(start, colour, symbol) for start, colour, symbol in zip(starts, chosen, symbols)]
    for needle in needles:
        draw_needle(rng, video, needle, event_frames)
    length = PROMPT_SPECIALS + pairs * per_pair + _question_tokens(question, tokenizer)
    return VideoSample(task, video, float(fps), question, answer, needles, length, seed, index)


def make_video_samples(task, length_tokens, count, seed=0, tokenizer=None, **settings):
    """`count` samples of `task` (indices 0..count-1), see `make_video_sample`."""
    return [make_video_sample(task, length_tokens, seed, index, tokenizer, **settings) for index in range(count)]
