"""Bad input: one clear error line, non-zero exit, and no worker left behind."""

import json
import os
import signal
import subprocess
import sys

import pytest

from helpers import REPO, TESTS, default_sigint, run_cli
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
                                           ("HangingBurst", "worker 1 stopped answering")])
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


def _without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the settings below are valid here")


@pytest.mark.parametrize("flags,needle", [
    (("--device", "cuda"), "--device cuda: this machine has no CUDA device"),
    (("--dist-backend", "nccl"), "--dist-backend nccl needs a CUDA device per worker"),
    (("--kernel-backend", "triton"), "--kernel-backend triton needs CUDA tensors"),
    (("--kernel-backend", "flash-attn"), "--kernel-backend flash-attn: the flash_attn package does not import"),
])
def test_machine_settings_are_checked_before_workers_start(tiny_model, doc_file, flags, needle, monkeypatch):
    """Refused on the driver before any worker exists (the message comes from
    `longctx.request.check_machine`, which LongContextLM and `generate` call before spawning)."""
    _without_cuda()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    proc = run_cli("generate", "--model", tiny_model("llama"), "--doc", doc_file[0], *flags, env=env)
    assert_one_line_error(proc, needle)
    with pytest.raises(LongCtxError, match=needle.split(":")[0]):
        LongContextLM(tiny_model("llama"), method="burst", nproc=2, **dict([(flags[0][2:].replace("-", "_"),
                                                                               flags[1])]))


def test_calibrate_for_cuda_without_cuda(tmp_path):
    _without_cuda()
    proc = run_cli("plan", "--calibrate", "--device", "cuda", "--costs", str(tmp_path / "costs.json"))
    assert_one_line_error(proc, "--device cuda: this machine has no CUDA device")
    assert not (tmp_path / "costs.json").exists()


def test_encoder_only_model_is_refused(doc_file, tmp_path):
    """transformers maps BERT to BertLMHeadModel (a causal-LM class): refused up front anyway."""
    from transformers import BertConfig

    BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(tmp_path)
    proc = run_cli("generate", "--model", str(tmp_path), "--doc", doc_file[0])
    assert_one_line_error(proc, "'bert' model, an encoder")


@pytest.mark.parametrize("method,needle", [
    ("not_on_path_pkg.methods:Mine", "no module named 'not_on_path_pkg' on the Python path (is its folder on "
                                     "PYTHONPATH"),
    ("plugins.faulty:NoSuchClass", "module 'plugins.faulty' has no 'NoSuchClass'"),
])
def test_plugin_that_does_not_import_says_why(tiny_model, doc_file, method, needle):
    proc = run_cli("generate", "--model", tiny_model("llama"), "--method", method, "--doc", doc_file[0])
    assert_one_line_error(proc, needle)


def test_max_new_tokens_beyond_the_model_positions(tiny_model, doc_file):
    proc = run_cli("generate", "--model", tiny_model("llama"), "--doc", doc_file[0], "--max-new-tokens", "40000")
    assert_one_line_error(proc, "more than the model's 32768 positions")


def test_killed_worker_is_reported_by_signal(tiny_model):
    lm = LongContextLM(tiny_model("llama"), method="burst", nproc=2, timeout_s=20)
    victim = lm._launcher._procs[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    with pytest.raises(WorkerError, match="worker 1 (failed: )?was killed by signal SIGKILL"):
        lm.run_ids([7] * 64, [8])
    lm.close()


def _stat(pid):
    """(state, parent pid) of process `pid` from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _workers(pid):
    """Pids of the spawned worker processes whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        stat = _stat(entry)
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                spawned = b"spawn_main" in handle.read()
        except OSError:
            continue
        if stat and stat[1] == pid and spawned:
            found.append(int(entry))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads worker pids from /proc")
def test_ctrl_c_prints_one_line_and_stops_every_worker(tiny_model, doc_file):
    """SIGINT to the whole process group (what a terminal's Ctrl-C sends) while the answer is
    streaming: one stderr line, status 130, no worker left."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    proc = subprocess.Popen([sys.executable, "-m", "longctx.cli", "generate", "--model", tiny_model("llama"),
                             "--doc", doc_file[0], "--max-new-tokens", "30000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                            preexec_fn=default_sigint)
    try:
        assert proc.stdout.read(len("answer: ")) == "answer: "  # workers are up and decoding
        workers = _workers(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert [line for line in stderr.splitlines() if line] == ["longctx: interrupted; every worker was stopped"]
    assert len(workers) == 2 and all(_stat(pid) is None or _stat(pid)[0] == "Z" for pid in workers)
