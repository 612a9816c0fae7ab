"""RULER-style task generators: determinism, lengths, depth, vocabulary, scoring."""

import pytest

from longctx.eval import TASKS, count_tokens, is_correct, make_sample, make_samples
from longctx.eval import vocab


@pytest.fixture(scope="module")
def tok():
    pytest.importorskip("transformers")
    from longctx.eval.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.mark.parametrize("task", TASKS)
def test_deterministic(task):
    a = make_samples(task, 1024, 3, seed=7)
    b = make_samples(task, 1024, 3, seed=7)
    c = make_samples(task, 1024, 3, seed=8)
    assert a == b
    assert [s.document for s in a] != [s.document for s in c]
    assert len({s.document for s in a}) == 3  # samples of one call differ


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("length", [300, 1000, 4096])
def test_length(task, length):
    for s in make_samples(task, length, 3, seed=1):
        assert s.length == count_tokens(s.prompt)
        tol = 8 if task == "kv_retrieval" else 0
        assert abs(s.length - length) <= tol


@pytest.mark.parametrize("task", TASKS)
def test_length_with_tokenizer(task, tok):
    for s in make_samples(task, 2048, 2, seed=3, tokenizer=tok):
        ids = tok(s.prompt)["input_ids"]
        assert len(ids) == s.length
        assert abs(s.length - 2048) <= 8


@pytest.mark.parametrize("task", ["niah_single", "niah_multikey", "niah_multivalue",
                                  "niah_multiquery"])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_depth(task, depth):
    for s in make_samples(task, 2000, 2, seed=2, depth=depth):
        first = s.answers[0]
        needle = f"The special magic number for"
        words = vocab.words_of(s.document)
        intro = len(vocab.words_of(vocab.NIAH_INTRO))
        needle_words = len(vocab.words_of(vocab.NEEDLE.format(key="k", value="1")))
        # word offset of the first answering needle, relative to the haystack filler
        pos = vocab.words_of(s.document).index(first)
        before = s.document[: s.document.index(f" is {first}.")]
        n_needles_before = before.count(needle) - 1
        filler_before = pos - intro - needle_words * n_needles_before - (needle_words - 2)
        filler_total = len(words) - intro - needle_words * s.document.count(needle)
        assert s.depth == depth
        assert abs(filler_before / filler_total - depth) < 0.02


def test_depth_percent_and_range():
    a = make_sample("niah_single", 800, 0, depth=50)
    b = make_sample("niah_single", 800, 0, depth=0.5)
    assert a.depth == b.depth == 0.5
    with pytest.raises(ValueError):
        make_sample("niah_single", 800, 0, depth=-0.1)
    with pytest.raises(ValueError):
        make_sample("nope", 800, 0)


@pytest.mark.parametrize("task", TASKS)
def test_answers_in_document(task):
    for s in make_samples(task, 1500, 5, seed=4):
        assert s.answer == ", ".join(s.answers)
        assert s.question.rstrip().endswith(("is", "are"))
        for a in s.answers:
            if task == "kv_retrieval":
                key = s.question.split("key ")[1].split(" ")[0]
                assert f"{key}: {a}," in s.document
            else:
                assert f" is {a}." in s.document
        if task == "niah_multikey":
            assert s.document.count("special magic number for") == 4
            key = s.question.split("number for ")[1].split(" ")[0]
            assert f"for {key} is {s.answer}." in s.document
        if task in ("niah_multivalue", "niah_multiquery"):
            assert len(s.answers) == 4 and len(set(s.answers)) == 4
            # answers are listed in document order
            assert sorted(s.answers, key=s.document.index) == s.answers


@pytest.mark.parametrize("task", TASKS)
def test_vocabulary_covered(task, tok):
    for s in make_samples(task, 1200, 3, seed=5):
        ids = tok(s.prompt + " " + s.answer)["input_ids"]
        assert tok.unk_token_id not in ids
        assert ids[0] == tok.bos_token_id
    # decode gives back space-separated lower-case words
    s = make_sample(task, 300, 0)
    text = tok.decode(tok(s.answer, add_special_tokens=False)["input_ids"])
    assert text.split() == vocab.words_of(s.answer)


def test_is_correct():
    s = make_sample("niah_single", 400, 0)
    assert is_correct(s.answer, s)
    assert is_correct(f" {s.answer} .", s)
    assert is_correct(f"{s.answer}\nand some more text", s)
    assert not is_correct("", s)
    assert not is_correct(f"{s.answer} {s.answer}", s)
    assert not is_correct(str(int(s.answer) % 899 + 100 + (int(s.answer) == 999)), s)
    m = make_sample("niah_multivalue", 400, 0)
    a = m.answers
    assert is_correct(" , ".join(reversed(a)), m)     # order does not matter
    assert is_correct(m.answer + " .", m)
    assert not is_correct(", ".join(a[:-1]), m)       # every answer must be there
    assert not is_correct("".join(a), m)
