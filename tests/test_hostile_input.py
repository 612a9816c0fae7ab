"""Hostile and odd input: one `longctx: error:` line, a non-zero exit, no worker left, and no code
from the input ever run (model directories with code, pickle weights and head files refused).

Each CLI case runs with a unique marker in its environment; afterwards no process carrying it
may be alive (`helpers.assert_none_left`).
"""

import json
import os
import shutil
import threading
import uuid

import pytest
import torch

from helpers import assert_none_left, run_cli
from longctx.api import LongContextLM
from longctx.errors import LongCtxError
from longctx.models.tiny import make_tiny_model


def run_marked(*args):
    """`longctx *args` with a fresh marker; asserts no process of it is left; returns the process."""
    marker = uuid.uuid4().hex
    proc = run_cli(*args, env=dict(os.environ, LONGCTX_FAULT_RUN=marker))
    assert_none_left(marker)
    return proc


def assert_one_error_line(proc, needle):
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("longctx: error:"), proc.stderr
    assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> path of the odd documents."""
    root = tmp_path_factory.mktemp("hostile")
    contents = {"latin1.txt": "caf\xe9 au lait ".encode("latin-1") * 20, "nul.txt": b"some text\x00more text " * 10,
                "blank.txt": b" \n\t \n", "ok.txt": b"a perfectly ordinary document " * 10,
                "long.txt": b"x" * 600}
    for name, data in contents.items():
        (root / name).write_bytes(data)
    return {name: str(root / name) for name in contents}


@pytest.fixture(scope="module")
def model_copy(tiny_model, tmp_path_factory):
    """A function: a copy of the tiny llama (with `change(path)` applied) in a fresh directory."""
    def copy(change):
        path = str(tmp_path_factory.mktemp("model") / "m")
        shutil.copytree(tiny_model("llama"), path)
        change(path)
        return path
    return copy


def generate(model, doc, *extra):
    return run_marked("generate", "--model", model, "--nproc", "2", "--doc", doc, *extra)


@pytest.mark.parametrize("name,extra,needle", [
    ("latin1.txt", (), "is not UTF-8 text (byte 0xe9 at offset 3)"),
    ("nul.txt", (), "contains NUL bytes"),
    ("blank.txt", ("--question", "q"), "the document is empty"),
    ("ok.txt", ("--question", ""), "the question is empty"),
    ("ok.txt", ("--question", "   "), "the question is empty"),
    ("ok.txt", ("--max-new-tokens", "0"), "--max-new-tokens must be at least 1"),
    ("ok.txt", ("--max-new-tokens", "-5"), "--max-new-tokens must be at least 1"),
    ("ok.txt", ("--method", "apb", "--anchor-len", "4", "--question", "a question far longer than four tokens"),
     "longer than the anchor"),
])
def test_odd_documents_and_requests(tiny_model, files, name, extra, needle):
    assert_one_error_line(generate(tiny_model("llama"), files[name], *extra), needle)


def test_document_longer_than_the_model_positions(tmp_path, files):
    model = make_tiny_model(str(tmp_path / "short"), max_positions=256)
    assert_one_error_line(generate(model, files["long.txt"], "--question", "q"), "more than the model's 256 positions")


def _add_auto_map(path):
    config = json.loads(open(os.path.join(path, "config.json")).read())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    with open(os.path.join(path, "config.json"), "w") as handle:
        json.dump(config, handle)
    with open(os.path.join(path, "modeling_evil.py"), "w") as handle:
        handle.write("raise SystemExit('this code must never run')\n")


def _pickle_weights(path):
    weights = os.path.join(path, "model.safetensors")
    from safetensors.torch import load_file

    torch.save(load_file(weights), os.path.join(path, "pytorch_model.bin"))
    os.remove(weights)


def test_model_with_its_own_code_is_refused(model_copy, files):
    assert_one_error_line(generate(model_copy(_add_auto_map), files["ok.txt"]), "ships its own modeling code")


def test_model_with_a_python_file_is_refused(model_copy, files):
    path = model_copy(lambda path: open(os.path.join(path, "helper.py"), "w").write("x = 1\n"))
    assert_one_error_line(generate(path, files["ok.txt"]), "ships Python code (helper.py)")


def test_pickle_weights_are_refused(model_copy, files):
    assert_one_error_line(generate(model_copy(_pickle_weights), files["ok.txt"]), "pickle files (pytorch_model.bin)")


def test_retaining_heads_file_that_is_not_safetensors(tiny_model, files, tmp_path):
    heads = tmp_path / "heads.pt"
    torch.save({"layers.0.0.weight": torch.zeros(2, 2)}, heads)
    proc = generate(tiny_model("llama"), files["ok.txt"], "--method", "apb", "--compressor", "retaining-heads",
                    "--retaining-heads", str(heads))
    assert_one_error_line(proc, "cannot read retaining heads")


def test_retaining_heads_of_another_model(tiny_model, files, tmp_path):
    from apb.heads import RetainingHeads
    from transformers import AutoConfig

    other = AutoConfig.from_pretrained(tiny_model("llama-gqa4"))
    heads = tmp_path / "other.safetensors"
    RetainingHeads.for_model(other).save(str(heads))
    proc = generate(tiny_model("llama"), files["ok.txt"], "--method", "apb", "--compressor", "retaining-heads",
                    "--retaining-heads", str(heads))
    assert_one_error_line(proc, "retaining heads")


def test_concurrent_requests_on_one_pool_are_refused_not_mixed(tiny_model):
    """While one request holds the pool (a stream not yet read), a request from another thread is
    refused at once; the first answers intact and the pool serves again afterwards."""
    with LongContextLM(tiny_model("llama"), method="burst", nproc=2) as lm:
        alone = lm.run_ids([5] * 300, [6, 7], max_new_tokens=8)
        stream = lm.stream("some document " * 30, "question?", max_new_tokens=4)
        outcome = {}

        def second():
            try:
                outcome["tokens"] = lm.run_ids([5] * 300, [6, 7], max_new_tokens=8).tokens
            except LongCtxError as exc:
                outcome["error"] = str(exc)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=60)
        assert "serving another request" in outcome.get("error", ""), outcome
        text = "".join(stream)
        assert stream.result is not None and text == stream.result.text
        assert lm.run_ids([5] * 300, [6, 7], max_new_tokens=8).tokens == alone.tokens
