"""RULER-style task generators: determinism, lengths, depth, vocabulary, scoring (the video
tasks registered beside them: tests/test_video_needles.py)."""

import pytest

from longctx.eval import TASKS, count_tokens, is_correct, make_sample, make_samples
from longctx.eval import vocab

TEXT_TASKS = [name for name, task in TASKS.items() if task.media is None]


@pytest.fixture(scope="module")
def tok():
    pytest.importorskip("transformers")
    from longctx.eval.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.mark.parametrize("task", TEXT_TASKS)
def test_deterministic(task):
    a = make_samples(task, 1024, 3, seed=7)
    b = make_samples(task, 1024, 3, seed=7)
    c = make_samples(task, 1024, 3, seed=8)
    assert a == b
    assert [s.document for s in a] != [s.document for s in c]
    assert len({s.document for s in a}) == 3  # samples of one call differ


@pytest.mark.parametrize("task", TEXT_TASKS)
@pytest.mark.parametrize("length", [300, 1000, 4096])
def test_length(task, length):
    for s in make_samples(task, length, 3, seed=1):
        assert s.length == count_tokens(s.prompt)
        tol = 8 if task == "kv_retrieval" else 0
        assert abs(s.length - length) <= tol


@pytest.mark.parametrize("task", TEXT_TASKS)
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


@pytest.mark.parametrize("task", TEXT_TASKS)
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


@pytest.mark.parametrize("task", TEXT_TASKS)
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


def _vt_statements(document):
    """[(variable, value or None, source or None, word offset)] of a variable_tracking document."""
    words, found = vocab.words_of(document), []
    for i in range(len(words) - 4):
        if words[i : i + 3] == ["the", "value", "of"] and words[i + 4] == "is":
            if words[i + 5 : i + 8] == ["the", "value", "of"]:
                found.append((words[i + 3], None, words[i + 8], i))
            else:
                found.append((words[i + 3], words[i + 5], None, i))
    return found


def _resolve(statements, variable):
    by_name = {name: (value, source) for name, value, source, _ in statements}
    value, source = by_name[variable]
    return value if value is not None else _resolve(statements, source)


@pytest.mark.parametrize("hops,chains", [(1, 1), (2, 2), (3, 2), (4, 3)])
def test_variable_tracking_answer_follows_the_asked_chain(hops, chains):
    for s in make_samples("variable_tracking", 1500, 4, seed=9, num_hops=hops, num_chains=chains):
        statements = _vt_statements(s.document)
        assert len(statements) == chains * (hops + 1)
        asked = s.question.split("value of ")[1].split(" ")[0]
        assert _resolve(statements, asked) == s.answer == s.answers[0]
        ends = [name for name, *_ in statements if all(source != name for *_, source, _ in statements)]
        assert len(ends) == chains and asked in ends
        assert len({_resolve(statements, end) for end in ends}) == chains  # distractor chains differ
        by_name = {name: offset for name, _, _, offset in statements}
        for name, _, source, offset in statements:  # a hop comes after what it reads
            assert source is None or by_name[source] < offset


@pytest.mark.parametrize("length", [2048, 4096])
@pytest.mark.parametrize("hops", [1, 2, 3])
def test_variable_tracking_puts_each_hop_on_another_host(tok, length, hops):
    """With hops + 1 equal contiguous blocks of the document's tokens (the hosts), statement i of
    every chain lies in block i."""
    from longctx.eval.harness import prompt_ids
    from longctx.plan import split_sizes

    for s in make_samples("variable_tracking", length, 5, seed=11, tokenizer=tok, num_hops=hops):
        doc_ids, _ = prompt_ids(tok, s)
        ends, start = [], 0
        for size in split_sizes(len(doc_ids), hops + 1):
            start += size
            ends.append(start)
        value_id, is_id = tok.convert_tokens_to_ids("value"), tok.convert_tokens_to_ids("is")
        starts = [i for i in range(len(doc_ids) - 3) if doc_ids[i] == value_id and doc_ids[i + 3] == is_id]
        assert len(starts) == 2 * (hops + 1)
        blocks = [next(b for b, end in enumerate(ends) if i < end) for i in starts]
        assert sorted(blocks) == [b for b in range(hops + 1) for _ in range(2)], blocks


def test_variable_tracking_depth_and_seeding():
    for depth in (0.0, 0.3, 0.7):
        for s in make_samples("variable_tracking", 3000, 3, seed=5, depth=depth):
            assert s.depth == depth
            statements = _vt_statements(s.document)
            total = len(vocab.words_of(s.document)) + 1
            asked = s.question.split("value of ")[1].split(" ")[0]
            chain, name = [], asked
            by_name = {n: (source, offset) for n, _, source, offset in statements}
            while name is not None:
                chain.append(by_name[name][1])
                name = by_name[name][0]
            first = min(chain)
            assert abs((first + 1) / total - depth) < 0.01, (first, total, depth)
            assert all(offset > first for offset in chain[:-1])
    assert make_sample("variable_tracking", 1000, 3, 1) == make_sample("variable_tracking", 1000, 3, 1)
    assert make_sample("variable_tracking", 1000, 3, 1) != make_sample("variable_tracking", 1000, 4, 1)
    assert make_sample("variable_tracking", 1000, 3, 1, num_hops=2) != make_sample("variable_tracking", 1000, 3, 1)
    with pytest.raises(ValueError, match="num_hops"):
        make_sample("variable_tracking", 1000, 0, num_hops=0)
    with pytest.raises(ValueError, match="shorter"):
        make_sample("variable_tracking", 40, 0)


def test_tasks_take_only_the_settings_they_declare():
    from longctx.errors import LongCtxError
    from longctx.eval.variants import parse_task_spec

    with pytest.raises(ValueError, match=r"task 'niah_single' has no setting 'num_hops' \(its settings: depth\)"):
        make_sample("niah_single", 400, 0, num_hops=5)
    with pytest.raises(LongCtxError, match=r"--tasks: task 'niah_single' has no option 'num-hops' \(its options: "
                                           r"depth\)"):
        parse_task_spec("niah_single[num-hops=5]")
    with pytest.raises(ValueError, match="task 'kv_retrieval' has no setting 'depth'"):
        make_sample("kv_retrieval", 400, 0, depth=0.5)
    assert make_sample("kv_retrieval", 400, 0, depth=None) == make_sample("kv_retrieval", 400, 0)


def test_a_task_registers_like_a_method():
    """A plug-in task is named by its path, with settings of its own."""
    from longctx.eval.variants import parse_task_spec

    spec = parse_task_spec("plugins.tasks:EchoNumber[value=17]")
    assert (spec.task, spec.settings) == ("plugins.tasks:EchoNumber", {"value": 17})
    sample = make_sample(spec.task, 120, 0, **spec.settings)
    assert sample.answer == "17" and sample.prompt.endswith("The special magic number for date is")
    assert is_correct(" 17", sample)
