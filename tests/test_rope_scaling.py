"""--rope-scaling / --max-model-len: RoPE scaling applied to the loaded configuration is exact
against transformers' own forward with the same configuration, for every exact method on 1-4
workers, past the model's own positions; the positions error says how to go further.

A tiny random Llama with 64 positions, asked 150 tokens: YaRN (factor 4 over the 64) and linear
scaling (factor 3), each compared with transformers' eager forward of a config that carries the
same rope parameters the way a model card would (rope_theta included)."""

import json

import pytest
import torch

from helpers import run_cli, run_workers
from longctx.config import RunConfig
from longctx.engine import Request
from longctx.errors import LongCtxError
from longctx.models import load_model
from longctx.request import Session

TOLERANCE = 1e-5
EXACT = [("dense", 1), ("ring", 2), ("burst", 3), ("allgather", 4), ("ulysses", 2)]
SCALINGS = [{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
            {"type": "linear", "factor": 3.0}]


@pytest.fixture(scope="module")
def short_llama(tmp_path_factory):
    """A tiny random Llama (byte-level tokenizer) with 64 positions, its weights redrawn with std
    0.2 so that attention, and so the rotation, decides the logits."""
    from transformers import AutoModelForCausalLM

    from longctx.models.tiny import make_tiny_model

    path = make_tiny_model(str(tmp_path_factory.mktemp("short-llama")), "llama", hidden=32, layers=2, heads=4,
                           kv_heads=2, seed=0, max_positions=64, intermediate=64)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.normal_(0.0, 0.2)
    model.save_pretrained(path)
    return path


def transformers_logits(path, rope, ids):
    """Last-position logits of transformers' eager forward, the rope parameters set in its config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    parameters = {key if key != "type" else "rope_type": value for key, value in rope.items()}
    config.rope_parameters = {"rope_theta": config.rope_parameters["rope_theta"], **parameters}
    model = AutoModelForCausalLM.from_pretrained(path, config=config, attn_implementation="eager",
                                                 dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, -1]


@pytest.mark.parametrize("rope", SCALINGS, ids=lambda rope: rope.get("rope_type") or rope["type"])
def test_scaled_rope_equals_transformers_on_1_to_4_workers(short_llama, rope):
    ids = torch.randint(3, 96, (150,), generator=torch.Generator().manual_seed(1)).tolist()
    reference = transformers_logits(short_llama, rope, ids)
    unscaled = transformers_logits(short_llama, {"rope_type": "default"}, ids)
    assert float((unscaled - reference).norm() / reference.norm()) > 100 * TOLERANCE  # the scaling matters here
    model = load_model(short_llama, torch.device("cpu"), torch.float32, rope_scaling=rope)
    for method, world in EXACT:
        config = RunConfig(model=short_llama, method=method, rope_scaling=rope)
        result = run_workers(model, config, Request(ids[:140], ids[140:], 1, method), world)
        error = float((result.first_logits - reference).norm() / reference.norm())
        assert error <= TOLERANCE, (rope, method, world, error)


def test_the_position_limit_and_its_error(short_llama):
    """64 positions: 150 tokens are refused naming both options; YaRN x4 allows 256; an explicit
    --max-model-len bounds it, and may not go past the scaled positions."""
    yarn = SCALINGS[0]
    with pytest.raises(LongCtxError, match=r"= 151 tokens, more than the model's 64 positions; extend them with "
                                           r"--rope-scaling \(e.g. '\{\"rope_type\": \"yarn\", \"factor\": 3.0\}'\) "
                                           r"and --max-model-len 151"):
        Session(RunConfig(model=short_llama, method="dense", nproc=1)).prepare_ids(list(range(3, 143)), [5] * 10, 1)
    session = Session(RunConfig(model=short_llama, method="dense", nproc=1, rope_scaling=yarn))
    assert session.position_limit == 256 and session.model_config.rope_parameters["rope_theta"] == 10000.0
    session.prepare_ids(list(range(3, 93)) * 2 + [5] * 40, [5] * 10, 4)  # 234 tokens
    bounded = Session(RunConfig(model=short_llama, method="dense", nproc=1, rope_scaling=yarn, max_model_len=200))
    with pytest.raises(LongCtxError, match="more than the model's 200 positions"):
        bounded.prepare_ids(list(range(3, 93)) * 2 + [5] * 40, [5] * 10, 4)
    with pytest.raises(LongCtxError, match=r"--max-model-len 300 is more than the model's 256 positions"):
        Session(RunConfig(model=short_llama, method="dense", nproc=1, rope_scaling=yarn, max_model_len=300))
    with pytest.raises(LongCtxError, match="rope_type 'dynamic' changes its frequencies with the length of each "
                                           "forward"):
        Session(RunConfig(model=short_llama, method="dense", nproc=1, rope_scaling={"rope_type": "dynamic",
                                                                                    "factor": 2.0}))
    with pytest.raises(LongCtxError, match="\"factor\" must be a number >= 1"):
        Session(RunConfig(model=short_llama, method="dense", nproc=1, rope_scaling={"rope_type": "linear",
                                                                                    "factor": "x"}))


def test_the_command_line_takes_both_options(short_llama, tmp_path):
    """`plan` reads them (no workers): the limit in its JSON, a bad JSON one line."""
    bad = run_cli("plan", "--model", short_llama, "--rope-scaling", "yarn", "--length", "100")
    assert bad.returncode == 2 and "--rope-scaling: must be a JSON object" in bad.stderr, bad.stderr
    good = run_cli("plan", "--model", short_llama, "--method", "ring", "--rope-scaling", json.dumps(SCALINGS[0]),
                   "--max-model-len", "200", "--length", "100", "--nproc", "2", "--json")
    assert good.returncode == 0, good.stderr
