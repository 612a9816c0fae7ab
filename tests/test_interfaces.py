"""The declared interfaces: every Comm (process group, simulated host, the tests' threads) and
every launcher (local, Ray, a plug-in) satisfies its Protocol, member by member with the same
parameters; a launcher plug-in registers like a method (its own flag, no edit in longctx); the
engine's result is typed, with one JSON form whose keys are the ones the dict had."""

import inspect
import json
import threading
import typing

import pytest
import torch

from helpers import ThreadComm, dense_result, run_cli
from launch.local import LocalLauncher
from launch.ray import RayLauncher
from longctx.comm import Comm, ProcessGroupComm, Transfer
from longctx.launcher import Launcher
from longctx.registry import launcher_class, launcher_names
from longctx.results import EngineResult, GenerationResult
from longctx.simulate import SimulatedComm, _Recorder

ENGINE_KEYS = ["method", "nproc", "plan", "prefill_s", "query_s", "decode_s", "tokens", "first_logits", "stats"]


def parameters(function):
    """Parameter names and defaults of `function`, without `self` / `cls`."""
    items = list(inspect.signature(function).parameters.values())
    return [(item.name, item.default) for item in items if item.name not in ("self", "cls")]


def assert_satisfies(implementation, protocol):
    """Every member of `protocol` exists on `implementation` (a class: its class attributes; an
    instance: every attribute), methods with the same parameters (names and defaults) in the
    same order."""
    for name, annotation in protocol.__annotations__.items():
        if not isinstance(implementation, type) or typing.get_origin(annotation) is typing.ClassVar:
            assert hasattr(implementation, name), f"{implementation} has no {name}"
    for name, member in vars(protocol).items():
        if name.startswith("_") or not (callable(member) or isinstance(member, classmethod)):
            continue
        declared = member.__func__ if isinstance(member, classmethod) else member
        assert hasattr(implementation, name), f"{implementation} has no {name}()"
        assert parameters(getattr(implementation, name)) == parameters(declared), (implementation, name)


@pytest.mark.parametrize("make", ["process group", "simulated", "threads"])
def test_every_comm_satisfies_the_protocol(make):
    comm = {"process group": lambda: ProcessGroupComm(),
            "simulated": lambda: SimulatedComm(1, 4, _Recorder(torch.device("cpu"), 1)),
            "threads": lambda: ThreadComm(0, {"world": 1, "barrier": threading.Barrier(1), "slots": [None]})}[make]()
    assert isinstance(comm, Comm)
    assert_satisfies(comm, Comm)
    assert isinstance(comm.all_gather_async(torch.zeros(2)), Transfer)


def test_a_comm_missing_a_collective_does_not_satisfy_it():
    """The check can fail: a class without all_to_all is not a Comm."""
    class Partial:
        rank, world, timeout_s = 0, 1, 1.0

        def barrier(self):
            pass

    assert not isinstance(Partial(), Comm)
    with pytest.raises(AssertionError):
        assert_satisfies(Partial(), Comm)


@pytest.mark.parametrize("name", [*launcher_names(), "plugins.threads:ThreadLauncher"])
def test_every_launcher_satisfies_the_protocol(name):
    cls = launcher_class(name)
    assert_satisfies(cls, Launcher)
    assert isinstance(cls.name, str) and isinstance(cls.runs_here, bool)
    assert (cls is LocalLauncher) == (name == "local") and (cls is RayLauncher) == (name == "ray")


def test_a_running_local_launcher_is_a_launcher(tiny_model):
    from longctx.config import RunConfig

    launcher = LocalLauncher(RunConfig(model=tiny_model("llama"), method="dense", nproc=1))
    try:
        assert isinstance(launcher, Launcher) and launcher.world == 1
    finally:
        launcher.close()


def test_a_launcher_plug_in_registers_like_a_method(tiny_model, tmp_path):
    """Named by its path, with its own option on the command line; its answer equals dense's."""
    from transformers import AutoTokenizer

    from longctx.models.family import encode_prompt

    path = tiny_model("llama")
    doc = tmp_path / "doc.txt"
    doc.write_text("Numbers: " + " ".join(str(i) for i in range(80)))
    proc = run_cli("generate", "--model", path, "--method", "burst", "--nproc", "2", "--doc", str(doc), "--question",
                   "Next?", "--max-new-tokens", "4", "--launcher", "plugins.threads:ThreadLauncher",
                   "--barrier-timeout", "30", "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    doc_ids, query_ids = encode_prompt(AutoTokenizer.from_pretrained(path), doc.read_text(), "Next?")
    assert payload["nproc"] == 2 and payload["tokens"] == dense_result(path, doc_ids, query_ids, 4).tokens
    refused = run_cli("generate", "--model", path, "--doc", str(doc), "--launcher", "plugins.threads:ThreadLauncher",
                      "--barrier-timeout", "0")
    assert refused.returncode == 2 and refused.stderr == "longctx: error: --barrier-timeout must be >= 1 (got 0.0)\n"


def test_the_engine_result_is_typed_with_one_json_form(tiny_model):
    path = tiny_model("llama")
    result = dense_result(path, list(range(5, 60)), [7, 8], max_new_tokens=3)
    assert isinstance(result, EngineResult) and result.ttft_s == result.prefill_s + result.query_s
    data = result.to_dict()
    assert list(data) == ENGINE_KEYS + ["doc_hidden", "query_hidden"]
    assert data["stats"] == {} and data["first_logits"] == result.first_logits.tolist()
    assert data["doc_hidden"] == result.doc_hidden.tolist()
    json.dumps(data)
    plain = EngineResult(**{**{item: getattr(result, item) for item in ENGINE_KEYS}})
    assert list(plain.to_dict()) == ENGINE_KEYS
    generated = GenerationResult.of(result, "text", 55, 2)
    assert list(generated.to_dict()) == ["text", "tokens", "method", "nproc", "doc_tokens", "question_tokens",
                                         "prefill_s", "query_s", "decode_s", "plan", "stats", "cached_tokens", "cache"]
    assert generated.ttft_s == result.ttft_s and generated.prefill_tokens_per_s == pytest.approx(55 / result.prefill_s)
