"""Bad input: one clear error line, non-zero exit, and no worker left behind."""

import json

import pytest

from helpers import run_cli
from longctx.api import LongContextLM
from longctx.errors import LongCtxError, WorkerError

def assert_one_line_error(proc, needle):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("longctx: error:"), proc.stderr
    assert needle in lines[0]


@pytest.fixture(scope="module")
def doc_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("docs") / "doc.txt"
    path.write_text("some words in a document " * 20)
    empty = path.parent / "empty.txt"
    empty.write_text("   \n")
    return str(path), str(empty)


def test_empty_document(tiny_model, doc_file):
    proc = run_cli("generate", "--model", tiny_model("llama"), "--doc", doc_file[1], "--question", "q")
    assert_one_line_error(proc, "the document is empty")


def test_unknown_method(tiny_model, doc_file):
    proc = run_cli("generate", "--model", tiny_model("llama"), "--method", "magic", "--doc", doc_file[0])
    assert_one_line_error(proc, "unknown method 'magic'")


@pytest.mark.parametrize("nproc,needle", [(0, "--nproc must be at least 1"), (2000, "too short for 2000 workers")])
def test_bad_worker_count(tiny_model, doc_file, nproc, needle):
    proc = run_cli("generate", "--model", tiny_model("llama"), "--nproc", str(nproc), "--doc", doc_file[0])
    assert_one_line_error(proc, needle)


def test_missing_model_directory(doc_file, tmp_path):
    proc = run_cli("generate", "--model", str(tmp_path / "nope"), "--doc", doc_file[0])
    assert_one_line_error(proc, "does not exist")


def test_not_a_causal_lm(doc_file, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    proc = run_cli("generate", "--model", str(tmp_path), "--doc", doc_file[0])
    assert_one_line_error(proc, "not a causal LM")


def test_ulysses_heads_not_divisible(tiny_model, doc_file):
    proc = run_cli("generate", "--model", tiny_model("llama"), "--method", "ulysses", "--nproc", "3",
                   "--doc", doc_file[0])
    assert_one_line_error(proc, "divide the attention heads (4)")


def test_missing_document_file(tiny_model, tmp_path):
    proc = run_cli("generate", "--model", tiny_model("llama"), "--doc", str(tmp_path / "missing.txt"))
    assert_one_line_error(proc, "cannot read document")


@pytest.mark.parametrize("plugin,needle", [("RaisingBurst", "injected failure on rank 1"),
                                           ("HangingBurst", "worker 0 failed")])
def test_failing_worker_stops_every_worker(tiny_model, plugin, needle):
    """A worker that raises (or hangs) in prefill ends the job with one error; none survive."""
    lm = LongContextLM(tiny_model("llama"), method="burst", nproc=2, timeout_s=5)
    procs = list(lm._launcher._procs)
    with pytest.raises(WorkerError, match=needle):
        lm.run_ids([7] * 64, [8], method=f"plugins.faulty:{plugin}")
    assert not any(proc.is_alive() for proc in procs)
    with pytest.raises(LongCtxError, match="shut down"):
        lm.run_ids([7] * 64, [8])
    lm.close()
