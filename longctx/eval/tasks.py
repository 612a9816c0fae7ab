"""RULER-style synthetic long-context tasks, deterministic and seeded.

Six tasks (names as in RULER):

``niah_single``
    One needle "The special magic number for <key> is <value>." hidden in filler text.
``niah_multikey``
    The needle plus ``num_distractors`` (default 3) needles with other keys.
``niah_multivalue``
    ``num_values`` (default 4) needles with the same key and different values; the
    answer is all of them.
``niah_multiquery``
    ``num_queries`` (default 4) needles with different keys, all asked in one question;
    the answer is all their values.
``kv_retrieval``
    The whole document is a list of ``<key1>-<key2>: <value>,`` pairs; one key is asked.
``variable_tracking``
    RULER's ``vt`` in words: ``num_chains`` (default 2) chains of ``num_hops`` (default 3)
    hops, "The value of <k0> is <value>." then "The value of <k1> is the value of <k0>." ...
    up to <k_hops>; the question asks the last variable of the first chain, the answer is
    its chain's value. A cross-block task: statement i of every chain sits in segment i of
    ``num_hops + 1`` equal segments of the *document's tokens* (jittered inside the middle
    70 % of its segment), so with ``num_hops + 1`` equal contiguous blocks (hosts) every hop
    of a chain lives on another host, and a later block's statement can only be resolved from
    an earlier block's tokens. ``depth`` instead puts the first statement of the asked chain
    at that fraction of the document and its hops in equal segments after it.

A sample's ``length`` is the token count of its prompt (``sample.prompt``: document, a
newline, question), counted with the given tokenizer including its special tokens, or, with
no tokenizer, as words + 1 (the BOS), which is exactly what the word-level tokenizer of
:mod:`longctx.eval.tokenizer` produces. With the word-level count the generators hit the
requested length exactly (kv_retrieval within a few tokens); with another tokenizer they land
close to it. ``depth`` (0..1, or 0..100 read as a percentage) places the needle that
answers the question (the first one in document order for the multi-answer tasks) at that
fraction of the haystack; the other needles are spread at random. Values are numbers
10..99, distinct within a sample. The question ends with an answer prefix, so a model's
continuation of ``sample.prompt`` is the answer: one number, or for the multi-answer tasks
the numbers in document order separated by commas.

Three more are video tasks (`media` "video"), VNBench-style: ``video_retrieval``,
``video_ordering`` and ``video_counting`` (`longctx.eval.video_needles`: a synthetic clip with
needles drawn on it and a question about them, for a video-language model).

Each task is a `Task` registered in `TASKS` by name (or named as a plug-in,
"package.module:ClassName"); its `Settings` dataclass declares the generator settings a variant
may set, so a setting the task does not take is refused.
"""

import random
import re
from dataclasses import dataclass, field, fields, replace

from longctx.eval import video_needles, vocab
from longctx.options import option
from longctx.registry import load



@dataclass
class Sample:
    task: str
    document: str
    question: str          # the question, ending with the answer prefix
    answer: str            # the exact expected answer string ("47" or "47, 31, 90, 12")
    length: int            # tokens of ``prompt`` (see module docstring)
    depth: float | None    # depth of the answering needle (fraction 0..1), None for kv
    answers: list[str] = field(default_factory=list)  # the individual answer values
    seed: int = 0
    index: int = 0

    @property
    def prompt(self) -> str:
        return join_prompt(self.document, self.question)


def join_prompt(document: str, question: str) -> str:
    return f"{document}\n{question}"


# --------------------------------------------------------------------------- token counting

class _Counter:
    """Token counts of text pieces: the given tokenizer, or words + BOS."""

    def __init__(self, tokenizer=None):
        self.tok = tokenizer
        if tokenizer is None:
            self.special = 1
        else:
            self.special = len(tokenizer("x")["input_ids"]) - len(
                tokenizer("x", add_special_tokens=False)["input_ids"])

    def piece(self, text: str) -> int:
        """Tokens ``text`` adds in the middle of a longer text."""
        if self.tok is None:
            return len(vocab.words_of(text))
        return len(self.tok(" " + text, add_special_tokens=False)["input_ids"])

    def pieces(self, texts: list[str]) -> list[int]:
        if self.tok is None:
            return [len(vocab.words_of(t)) for t in texts]
        enc = self.tok([" " + t for t in texts], add_special_tokens=False)["input_ids"]
        return [len(e) for e in enc]

    def full(self, text: str) -> int:
        if self.tok is None:
            return len(vocab.words_of(text)) + 1
        return len(self.tok(text)["input_ids"])


def count_tokens(text: str, tokenizer=None) -> int:
    """Prompt length as the generators measure it (see module docstring)."""
    return _Counter(tokenizer).full(text)


# --------------------------------------------------------------------------- haystack

_SLOT = re.compile(r"\{(\w+)\}")
_TEMPLATE_LEN = [len(vocab.words_of(_SLOT.sub("x", t))) for t in vocab.TEMPLATES]
_MIN_T, _MAX_T = min(_TEMPLATE_LEN), max(_TEMPLATE_LEN)


def _sentence(rng: random.Random, template: str) -> str:
    s = _SLOT.sub(lambda m: rng.choice(vocab.FILLER[m.group(1)]), template)
    s = s[0].upper() + s[1:]
    return s[:-2] + "."  # "... ." -> "...."


def _filler(rng: random.Random, budget: int, counter: _Counter) -> list[str]:
    """Filler sentences whose token count is ``budget`` (exactly for the word count)."""
    out: list[str] = []
    if counter.tok is None:
        remaining = budget
        while remaining > 0:
            if remaining <= _MAX_T:
                fits = [i for i, n in enumerate(_TEMPLATE_LEN) if n == remaining]
            else:
                fits = []
            if not fits:
                fits = [i for i, n in enumerate(_TEMPLATE_LEN) if n <= remaining - _MIN_T]
            if not fits:  # remaining < 2 * _MIN_T and no exact template: best effort
                fits = [min(range(len(_TEMPLATE_LEN)), key=lambda i: _TEMPLATE_LEN[i])]
                if _TEMPLATE_LEN[fits[0]] > remaining:
                    break
            i = rng.choice(fits)
            out.append(_sentence(rng, vocab.TEMPLATES[i]))
            remaining -= _TEMPLATE_LEN[i]
        return out
    # any other tokenizer: draw sentences in batches and count them with the tokenizer
    remaining, misses = budget, 0
    while remaining > 0 and misses < 64:
        batch = [_sentence(rng, rng.choice(vocab.TEMPLATES)) for _ in range(64)]
        for s, n in zip(batch, counter.pieces(batch)):
            if n > remaining:
                misses += 1
                continue
            out.append(s)
            remaining -= n
    return out


def _place(sentences: list[str], counts: list[int], needles: list[tuple[float, str]]) -> str:
    """Insert needles between sentences at the given depths (fraction of filler tokens)."""
    total = sum(counts)
    cum = [0]
    for n in counts:
        cum.append(cum[-1] + n)
    inserts: dict[int, list[str]] = {}
    for depth, text in needles:
        target = depth * total
        idx = min(range(len(cum)), key=lambda i: abs(cum[i] - target))
        inserts.setdefault(idx, []).append(text)
    parts: list[str] = []
    for i in range(len(sentences) + 1):
        parts.extend(inserts.get(i, []))
        if i < len(sentences):
            parts.append(sentences[i])
    return " ".join(parts)


def _norm_depth(depth: float | None) -> float | None:
    if depth is None:
        return None
    depth = float(depth)
    if depth > 1.0:
        depth /= 100.0
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in 0..1 (or 0..100 percent), got {depth}")
    return depth


def _values(rng: random.Random, n: int) -> list[str]:
    return [str(v) for v in rng.sample(range(vocab.VALUE_MIN, vocab.VALUE_MAX + 1), n)]


def _key_list(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]


# --------------------------------------------------------------------------- tasks

@dataclass(frozen=True)
class DepthSettings:
    """Settings of every needle task (and variable_tracking): where the answer sits."""

    depth: float = option(None, "fraction 0..1 (or 0..100 percent) of the document where the answering needle "
                                "sits (default: random)")


@dataclass(frozen=True)
class MultiKeySettings(DepthSettings):
    num_distractors: int = option(3, "needles with other keys")


@dataclass(frozen=True)
class MultiValueSettings(DepthSettings):
    num_values: int = option(4, "needles with the asked key, each another value")


@dataclass(frozen=True)
class MultiQuerySettings(DepthSettings):
    num_queries: int = option(4, "needles asked about in one question")


@dataclass(frozen=True)
class NoSettings:
    """A task without generator settings."""


@dataclass(frozen=True)
class TrackingSettings(DepthSettings):
    num_hops: int = option(3, "copy statements after each chain's value")
    num_chains: int = option(2, "chains in the document (the first is asked)")


class Task:
    """A registered task (`TASKS`): its `name`, its generator settings (`Settings`, a dataclass
    of `longctx.options.option` fields: what a variant like `variable_tracking[num-hops=1]` may
    set) and `generate`, which makes one sample from a seeded `rng`."""

    name = ""
    Settings = NoSettings
    media = None  # "video": its samples are clips (`make` instead of `generate`)

    def generate(self, rng: random.Random, length: int, counter: _Counter, settings) -> Sample:
        """One sample of about `length` prompt tokens counted by `counter` (its `length`, seed and
        index are filled in by `make_sample`)."""
        raise NotImplementedError


class NeedleTask(Task):
    """A needle-in-a-haystack task: `shape(settings)` gives (keys, values per key), `answers(i)`
    whether the needles of key i answer the question, `question(keys, answering)` the question
    (`answering`: the answering (key, value) pairs in document order)."""

    def __init__(self, name, settings, shape, answers, question):
        self.name, self.Settings = name, settings
        self.shape, self.answers, self.question = shape, answers, question

    def generate(self, rng, length, counter, settings):
        n_keys, n_vals = self.shape(settings)
        keys = rng.sample(vocab.KEYS, n_keys)
        values = _values(rng, n_keys * n_vals)
        # needles in document order: (key, value, answers the question?)
        needles = [(keys[i // n_vals], value, self.answers(i // n_vals)) for i, value in enumerate(values)]
        depth = settings.depth
        depths = sorted(rng.random() for _ in needles)
        if depth is None:
            order = list(range(len(needles)))
            rng.shuffle(order)
            placed = [(depths[j], needles[i]) for j, i in enumerate(order)]
        else:
            # the answering needle (the first in document order if several) sits at `depth`;
            # the others go at random depths (answering ones after it).
            first = next(i for i, n in enumerate(needles) if n[2])
            rest = [n for i, n in enumerate(needles) if i != first]
            placed = [(depth, needles[first])]
            for n in rest:
                d = rng.uniform(depth, 1.0) if n[2] else rng.random()
                placed.append((d, n))
        placed.sort(key=lambda p: p[0])
        texts = [(d, vocab.NEEDLE.format(key=k, value=v)) for d, (k, v, _) in placed]
        answering = [(k, v) for _, (k, v, a) in placed if a]
        answers = [v for _, v in answering]
        question = self.question(keys, answering)

        fixed = counter.full(join_prompt(vocab.NIAH_INTRO, question)) + sum(
            counter.pieces([t for _, t in texts]))
        budget = length - fixed
        if budget < 0:
            raise ValueError(f"{self.name}: length {length} is shorter than the needles and question "
                             f"({fixed} tokens)")
        sentences = _filler(rng, budget, counter)
        counts = counter.pieces(sentences) if counter.tok is not None else [
            len(vocab.words_of(s)) for s in sentences]
        haystack = _place(sentences, counts, texts)
        document = f"{vocab.NIAH_INTRO} {haystack}"
        first_depth = next(d for d, n in placed if n[2])
        return Sample(task=self.name, document=document, question=question, answer=", ".join(answers),
                      answers=answers, length=0, depth=first_depth)


class KVRetrieval(Task):
    """The whole document is ``<key1>-<key2>: <value>,`` pairs; one key is asked."""

    name = "kv_retrieval"

    def generate(self, rng, length, counter, settings):
        question_key_words = rng.sample(vocab.KEYS, 2)
        qkey = "-".join(question_key_words)
        question = vocab.Q_KV.format(key=qkey)
        fixed = counter.full(join_prompt(vocab.KV_INTRO, question))
        per_pair = counter.piece(vocab.KV_PAIR.format(key="a-b", value="123"))
        n_pairs = max(1, (length - fixed) // per_pair)
        keys = {qkey}
        pairs = []
        while len(pairs) < n_pairs - 1:
            k = "-".join(rng.sample(vocab.KEYS, 2))
            if k in keys:
                continue
            keys.add(k)
            pairs.append(k)
        values = [str(rng.randint(vocab.VALUE_MIN, vocab.VALUE_MAX)) for _ in pairs]
        answer = _values(rng, 1)[0]
        pos = rng.randint(0, len(pairs))
        pairs.insert(pos, qkey)
        values.insert(pos, answer)
        body = " ".join(vocab.KV_PAIR.format(key=k, value=v) for k, v in zip(pairs, values))
        document = f"{vocab.KV_INTRO} {body}"
        depth = pos / max(1, len(pairs) - 1)
        return Sample(task=self.name, document=document, question=question, answer=answer,
                      answers=[answer], length=0, depth=depth)


def _segment_depths(rng: random.Random, count: int, start: float = 0.0) -> list[float]:
    """One fraction in each of `count` equal segments of [start, 1], jittered inside the middle
    70 % of its segment, in increasing order."""
    width = (1.0 - start) / count
    return [start + width * (i + rng.uniform(0.15, 0.85)) for i in range(count)]


class VariableTracking(Task):
    """Chains of variable assignments across the document; the last variable of the first chain is asked."""

    name = "variable_tracking"
    Settings = TrackingSettings

    def generate(self, rng, length, counter, settings):
        depth, num_hops, num_chains = settings.depth, settings.num_hops, settings.num_chains
        if num_hops < 1 or num_chains < 1:
            raise ValueError(f"variable_tracking needs num_hops >= 1 and num_chains >= 1 "
                             f"(got {num_hops}, {num_chains})")
        if num_chains * (num_hops + 1) > len(vocab.KEYS):
            raise ValueError(f"variable_tracking: at most {len(vocab.KEYS)} variables "
                             f"(num_chains * (num_hops + 1))")
        names = rng.sample(vocab.KEYS, num_chains * (num_hops + 1))
        values = _values(rng, num_chains)
        statements = []  # (fraction of the document, text), every chain in order
        for chain in range(num_chains):
            keys = names[chain * (num_hops + 1): (chain + 1) * (num_hops + 1)]
            if chain == 0 and depth is not None:
                fractions = [depth] + _segment_depths(rng, num_hops, depth)
            else:
                fractions = _segment_depths(rng, num_hops + 1)
            texts = [vocab.VT_VALUE.format(key=keys[0], value=values[chain])]
            texts += [vocab.VT_COPY.format(key=key, source=source) for source, key in zip(keys, keys[1:])]
            statements += list(zip(fractions, texts))
            if chain == 0:
                asked, first_depth = keys[-1], fractions[0]
        statements.sort(key=lambda item: item[0])
        question = vocab.Q_VT.format(key=asked)
        counts = counter.pieces([text for _, text in statements])
        intro = counter.full(vocab.VT_INTRO)
        budget = length - counter.full(join_prompt(vocab.VT_INTRO, question)) - sum(counts)
        if budget < 0:
            raise ValueError(f"variable_tracking: length {length} is shorter than the statements and "
                             f"question ({length - budget} tokens)")
        sentences = _filler(rng, budget, counter)
        filler_counts = counter.pieces(sentences)
        filler, doc_len = sum(filler_counts), intro + sum(filler_counts) + sum(counts)
        # a statement at document fraction f has f * doc_len tokens before it: the intro, the
        # statements placed before it and the filler in between (never before an earlier one)
        placed, before, share = [], 0, 0.0
        for (fraction, text), count in zip(statements, counts):
            if filler:
                share = min(1.0, max(share, (fraction * doc_len - intro - before) / filler))
            placed.append((share, text))
            before += count
        document = f"{vocab.VT_INTRO} {_place(sentences, filler_counts, placed)}"
        return Sample(task=self.name, document=document, question=question, answer=values[0],
                      answers=[values[0]], length=0, depth=first_depth)


@dataclass(frozen=True)
class VideoSettings:
    num_needles: int = option(None, "needles in the clip (ordering and counting; default 2-4 / 1-5 at random)")


class VideoNeedleTask(Task):
    """A VNBench-style video task (`longctx.eval.video_needles`); its samples are VideoSamples."""

    Settings = VideoSettings
    media = "video"

    def __init__(self, name):
        self.name = name

    def make(self, length, seed, index, tokenizer, settings):
        """The seeded VideoSample of about `length` prompt tokens."""
        return video_needles.make_video_sample(self.name, length, seed, index, tokenizer,
                                               num_needles=settings.num_needles)


def _single_key(keys, answering):
    return vocab.Q_SINGLE.format(key=keys[0])


TASKS = {task.name: task for task in (
    NeedleTask("niah_single", DepthSettings, lambda s: (1, 1), lambda i: True, _single_key),
    NeedleTask("niah_multikey", MultiKeySettings, lambda s: (1 + s.num_distractors, 1), lambda i: i == 0,
               _single_key),
    NeedleTask("niah_multivalue", MultiValueSettings, lambda s: (1, s.num_values), lambda i: True,
               lambda keys, answering: vocab.Q_MULTIVALUE.format(key=keys[0])),
    NeedleTask("niah_multiquery", MultiQuerySettings, lambda s: (s.num_queries, 1), lambda i: True,
               lambda keys, answering: vocab.Q_MULTIQUERY.format(keys=_key_list([k for k, _ in answering]))),
    KVRetrieval(),
    VariableTracking(),
    *(VideoNeedleTask(name) for name in video_needles.VIDEO_TASKS),
)}


def task_named(name: str) -> Task:
    """The Task registered as `name`, or a plug-in Task class named "package.module:ClassName"
    (instantiated). ValueError for an unknown name, LongCtxError for a plug-in that does not
    import."""
    if name in TASKS:
        return TASKS[name]
    if ":" in name:
        return load("task", name, {})()
    raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")


def task_settings(task: Task, settings: dict):
    """`task`'s Settings from `settings` (keywords; None values count as not given). ValueError
    naming a setting the task does not declare."""
    declared = {item.name for item in fields(task.Settings)}
    given = {key: value for key, value in settings.items() if value is not None}
    unknown = sorted(set(given) - declared)
    if unknown:
        raise ValueError(f"task {task.name!r} has no setting {unknown[0]!r} (its settings: "
                         f"{', '.join(sorted(declared)) or 'none'})")
    values = task.Settings(**given)
    if getattr(values, "depth", None) is not None:
        values = replace(values, depth=_norm_depth(values.depth))
    return values


def make_sample(task: str, length_tokens: int, seed: int, index: int = 0, tokenizer=None,
                **settings) -> Sample:
    """One sample; the same (task, length, seed, index, tokenizer, settings) gives the same one.

    `settings` are the task's generator settings (its `Task.Settings`: depth, num_hops, ...;
    see the module docstring); one the task does not declare is a ValueError.
    """
    spec = task_named(task)
    values = task_settings(spec, settings)
    if spec.media == "video":
        return spec.make(length_tokens, seed, index, tokenizer, values)
    rng = random.Random(f"{task}/{length_tokens}/{seed}/{index}/{settings.get('depth')}")
    counter = _Counter(tokenizer)
    s = spec.generate(rng, length_tokens, counter, values)
    s.length = counter.full(s.prompt)
    s.seed, s.index = seed, index
    return s


def make_samples(task: str, length_tokens: int, count: int, seed: int = 0, tokenizer=None,
                 **settings) -> list[Sample]:
    """``count`` samples of ``task`` at about ``length_tokens`` prompt tokens (see module doc);
    `settings` as for `make_sample` (``depth`` 0..1 or 0..100 % fixes the answering needle's
    depth; None draws it at random)."""
    return [make_sample(task, length_tokens, seed, i, tokenizer, **settings)
            for i in range(count)]


# --------------------------------------------------------------------------- scoring

def _norm_words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def is_correct(prediction: str, sample: Sample) -> bool:
    """Normalised exact match for one-answer tasks; all answers present for the others.

    The prediction is the model's continuation of ``sample.prompt``. It is cut at the first
    newline, lower-cased and split into words (punctuation dropped). A one-answer task is
    right when those words are exactly the answer's words; a multi-answer task when every
    answer value is among them (any order); a video task when the first word is the answer
    (its answers are single words of a closed vocabulary, `video_needles.answer_words`).
    """
    words = _norm_words(prediction.split("\n", 1)[0]) if prediction.strip() else []
    if isinstance(sample, video_needles.VideoSample):  # one word of a closed vocabulary: the first word
        return words[:1] == _norm_words(sample.answer)
    if len(sample.answers) <= 1:
        return words == _norm_words(sample.answer)
    return all(a.lower() in words for a in sample.answers)
