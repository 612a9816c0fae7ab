"""APB and Star on real local worker processes (gloo) and through the CLI.

Worker pools take tens of seconds to start on a small machine, so this file starts one
2-worker pool and one 2-worker CLI job (tests/test_apb_inprocess.py covers 1-4 workers and
every compressor in one process), plus one `slow` 4-worker pool for the document lengths of
the issue (1,000 / 4,097 / 10,001 tokens).
"""

import json

import pytest

from helpers import dense_result, relative_error
from longctx.api import LongContextLM
from longctx.cli import main as cli_main
from longctx.compare import random_prompt
from longctx.errors import LongCtxError

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def full_passing_pool(tiny_model):
    """2 workers running APB with no anchor and passing blocks covering every earlier key."""
    path = tiny_model("llama")
    with LongContextLM(path, method="apb", nproc=2, anchor_len=0, passing_ratio=1.0, balance="equal") as lm:
        yield path, lm


@pytest.mark.parametrize("length", [203, 517])
def test_apb_with_full_passing_equals_dense_on_2_workers(full_passing_pool, length):
    path, lm = full_passing_pool
    doc, question = random_prompt(256, length, 5, seed=length)
    reference = dense_result(path, doc, question)
    result = lm.run_ids(doc, question, max_new_tokens=6, return_hidden=True)
    assert relative_error(result, reference) <= TOLERANCE
    assert result.tokens == reference.tokens
    sends = result.plan["passing_tokens"]
    assert sends == result.plan["block_sizes"][:-1] + [0]
    assert result.stats.passing_bytes_per_layer == 2 * 2 * 16 * 4 * sum(sends)


def test_pool_rejects_bad_requests_and_keeps_serving(full_passing_pool):
    _, lm = full_passing_pool
    with pytest.raises(LongCtxError, match="'star' passes no blocks"):
        lm.run_ids([5] * 100, [6], method="star")
    with pytest.raises(LongCtxError, match="too short for 2 workers"):
        lm.run_ids([5], [6])
    assert len(lm.run_ids([7] * 50, [8, 9], max_new_tokens=2).tokens) == 2


def test_cli_generate_apb_json_reports_sizes_and_bytes(tiny_model, tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text("the quick brown fox jumps over the lazy dog. " * 22)  # 990 characters + BOS
    status = cli_main(["generate", "--model", tiny_model("qwen2"), "--method", "apb", "--nproc", "2", "--balance",
                       "equal", "--doc", str(doc), "--question", "what jumps?", "--max-new-tokens", "3", "--json"])
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    plan = report["plan"]
    assert plan["block_sizes"] == [496, 495] and plan["anchor_len"] == 128 and plan["passing_len"] == 62
    assert plan["hosts"][1]["anchor_len"] == 128 and plan["hosts"][1]["passing_len"] == 62
    assert report["stats"]["passing_bytes_per_layer"] == 2 * 2 * 16 * 4 * 62
    assert len(report["tokens"]) == 3


def test_cli_bad_question_is_one_line(tiny_model, tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text("x" * 300)
    status = cli_main(["generate", "--model", tiny_model("llama"), "--method", "apb", "--nproc", "2",
                       "--anchor-len", "4", "--doc", str(doc), "--question", "a much longer question", "--json"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "longer than the anchor (4 tokens)" in err


@pytest.mark.slow
def test_issue_lengths_on_4_workers(tiny_model):
    """apb and star on 4 real workers for documents of 1,000 / 4,097 / 10,001 tokens (one pool)."""
    with LongContextLM(tiny_model("llama"), method="apb", nproc=4) as lm:
        for length in (1000, 4097, 10001):
            doc, question = random_prompt(256, length, 12, seed=length)
            for method in ("apb", "star"):
                result = lm.run_ids(doc, question, max_new_tokens=4, method=method)
                plan = result.plan
                assert sum(plan["block_sizes"]) == length and len(result.tokens) == 4
                if method == "apb":
                    assert plan["passing_tokens"][-1] == 0 and result.stats.passing_bytes_per_layer > 0
                else:
                    assert plan["anchor_len"] == -(-length // 4) and result.stats.passing_bytes_per_layer == 0
