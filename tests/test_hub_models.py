"""Models named by Hugging Face Hub id, resolved offline from a cache this test lays out in a
temporary HF_HOME (the layout huggingface_hub writes: refs/<branch> -> commit, snapshots/<commit>/).
No network, ever: every run sets HF_HUB_OFFLINE=1. A Hub id gets the same checks as a local
directory (no code of its own, safetensors only)."""

import json
import os
import shutil

import pytest

from helpers import dense_result, run_cli
from longctx.models.family import encode_prompt

MAIN, V2 = "a" * 40, "b" * 40


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, tiny_model):
    """HF_HOME holding org/tiny (main: the tiny llama; tag v2: a wider model), org/coded (code of
    its own), org/pickled (pickle weights only)."""
    from longctx.models.tiny import make_tiny_model

    home = tmp_path_factory.mktemp("hf-home")
    wide = make_tiny_model(str(tmp_path_factory.mktemp("wide")), "llama", 96, 2, 4, 2, seed=2)

    def lay_out(repo, commit, source, refs=("main",), extra=None):
        root = home / "hub" / f"models--{repo.replace('/', '--')}"
        snapshot = root / "snapshots" / commit
        shutil.copytree(source, snapshot)
        (root / "refs").mkdir(parents=True, exist_ok=True)
        for ref in refs:
            (root / "refs" / ref).write_text(commit)
        (extra or (lambda path: None))(snapshot)
        return str(snapshot)

    def coded(path):
        (path / "modeling_tiny.py").write_text("raise SystemExit('never run')\n")

    def pickled(path):
        for name in os.listdir(path):
            if name.endswith(".safetensors"):
                os.rename(path / name, path / "pytorch_model.bin")

    snapshots = {"main": lay_out("org/tiny", MAIN, tiny_model("llama")), "v2": lay_out("org/tiny", V2, wide, ("v2",))}
    lay_out("org/coded", MAIN, tiny_model("llama"), extra=coded)
    lay_out("org/pickled", MAIN, tiny_model("llama"), extra=pickled)
    return str(home), snapshots


def _env(home):
    env = {name: value for name, value in os.environ.items() if not name.startswith("HF_")}
    return dict(env, HF_HOME=home, HF_HUB_OFFLINE="1")


@pytest.fixture
def offline(hf_home, monkeypatch):
    """This process resolves from the test's HF_HOME, offline (what HF_HOME / HF_HUB_OFFLINE set
    when huggingface_hub is imported, as in the subprocess test below)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", os.path.join(hf_home[0], "hub"))
    return hf_home[1]


def test_hub_id_resolves_from_the_cache_at_a_revision(offline):
    """`LongContextLM(model="org/tiny", revision=...)` builds its RunConfig like this."""
    from longctx.config import RunConfig
    from longctx.errors import LongCtxError

    assert RunConfig(model="org/tiny").validate().resolve_model().model == offline["main"]
    assert RunConfig(model="org/tiny", revision="v2").validate().resolve_model().model == offline["v2"]  # a tag
    assert RunConfig(model="org/tiny", revision=V2).validate().resolve_model().model == offline["v2"]  # a commit
    with pytest.raises(LongCtxError, match="'org/tiny' at revision 'v3' is no local directory and not in the "
                                           "Hugging Face cache .* HF_HUB_OFFLINE is set"):
        RunConfig(model="org/tiny", revision="v3").resolve_model()
    with pytest.raises(LongCtxError, match="names a Hub revision, but --model .* is a local directory"):
        RunConfig(model=offline["main"], revision="v2").resolve_model()


def test_hub_id_gets_the_checks_of_a_local_directory(offline):
    from longctx.config import RunConfig
    from longctx.errors import LongCtxError
    from longctx.request import Session

    for model, needle in (("org/coded", "ships Python code (modeling_tiny.py)"),
                          ("org/pickled", "holds its weights as pickle files (pytorch_model.bin)"),
                          ("org/absent", "'org/absent' is no local directory and not in the Hugging Face cache")):
        with pytest.raises(LongCtxError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            Session(RunConfig(model=model, nproc=1, method="dense"))


def test_generate_by_hub_id_gives_the_local_directorys_answer(hf_home, tiny_model, tmp_path):
    """The command line, with HF_HOME and HF_HUB_OFFLINE=1 in its environment."""
    home, snapshots = hf_home
    doc = tmp_path / "doc.txt"
    doc.write_text("Numbers: " + " ".join(str(i) for i in range(80)))
    proc = run_cli("generate", "--model", "org/tiny", "--method", "ring", "--nproc", "2", "--doc", str(doc),
                   "--question", "Next?", "--max-new-tokens", "4", "--json", env=_env(home))
    assert proc.returncode == 0, proc.stderr
    from transformers import AutoTokenizer

    doc_ids, query_ids = encode_prompt(AutoTokenizer.from_pretrained(snapshots["main"]), doc.read_text(), "Next?")
    assert json.loads(proc.stdout)["tokens"] == dense_result(tiny_model("llama"), doc_ids, query_ids, 4).tokens
