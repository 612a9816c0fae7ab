"""APB (query, random and retaining-heads compressors), Star and Spava against independent
references, layer by layer (`approx_reference`): every host's attention output rebuilt from
the plan, the rows the method selected and explicit masks, within 1e-5; the inputs, the
selected rows and the caches checked exactly. In one process (worker threads); the same on
real gloo worker processes in tests/test_approx_reference_gloo.py.

The references can fail: an anchor that sees the passed keys (APB's or Spava's mask without
its anchor rule) is caught here.
"""

import pytest
import torch

from apb.heads import RetainingHeads
from approx_reference import TOLERANCE, Spy, apb_errors, attend_visible, spava_errors, spava_flags
from helpers import run_workers
from longctx.compare import random_prompt
from longctx.config import RunConfig
from longctx.engine import Request
from longctx.features import Kernels
from longctx.kernels import reference_attention
from longctx.models import load_model

DOC_LEN, QUERY_LEN, NEW_TOKENS = 300, 5, 3


@pytest.fixture(scope="module")
def models(tiny_model):
    """name -> (model dir, loaded fp32 model)."""
    return {name: (tiny_model(name), load_model(tiny_model(name), torch.device("cpu"), torch.float32))
            for name in ("llama", "qwen2")}


@pytest.fixture(scope="module")
def heads_file(models, tmp_path_factory):
    """Randomly initialised retaining heads for the tiny Llama (the reference needs any selection)."""
    path = str(tmp_path_factory.mktemp("heads") / "heads.safetensors")
    with torch.random.fork_rng():
        torch.manual_seed(7)
        RetainingHeads.for_model(models["llama"][1].config, hidden=16).save(path)
    return path


def spied_run(model, path, method, world, options, seed=DOC_LEN):
    """Run `method` on `world` worker threads under a Spy; returns (spy, doc, question, result)."""
    doc, question = random_prompt(256, DOC_LEN, QUERY_LEN, seed=seed)
    with Spy() as spy:
        result = run_workers(model, RunConfig(model=path, method=method, **options),
                             Request(doc, question, NEW_TOKENS, method), world)
    return spy, doc, question, result


APB_CASES = [
    ("apb", 2, {}, "llama"),
    ("apb", 3, {}, "llama"),
    ("apb", 4, {"balance": "equal"}, "llama"),
    ("apb", 3, {}, "qwen2"),
    ("apb", 3, {"anchor_len": 0, "passing_len": 20}, "llama"),  # no anchor: host 0..1 run a question probe
    ("apb", 3, {"compressor": "random"}, "llama"),
    ("apb", 3, {"compressor": "retaining-heads"}, "llama"),
    ("star", 3, {"anchor_len": 24}, "llama"),
    ("star", 4, {}, "llama"),
]


@pytest.mark.parametrize("method,world,options,model_name", APB_CASES,
                         ids=[f"{m}-{w}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}-{n}"
                              for m, w, o, n in APB_CASES])
def test_apb_and_star_match_the_independent_reference(models, heads_file, method, world, options, model_name):
    path, model = models[model_name]
    if options.get("compressor") == "retaining-heads":
        options = dict(options, retaining_heads=heads_file)
    spy, doc, question, result = spied_run(model, path, method, world, options)
    assert len(spy.prefill) == world * model.config.num_hidden_layers
    if method == "apb":
        assert sum(result.plan["passing_tokens"]) > 0  # something was passed, and selected
        assert any(0 < host.sends < host.candidates for host in spy.plan.hosts)
    errors = apb_errors(spy, doc, question)
    assert max(errors.values()) <= TOLERANCE, errors
    assert len(result.tokens) == NEW_TOKENS


SPAVA_CASES = [
    (2, {}),
    (3, {"anchor_len": 16, "passing_len": 8}),
    (4, {"anchor_len": 16, "passing_len": 8, "anchor_sharding": 0}),
    (2, {"anchor_len": 16, "passing_len": 8, "layout": "contiguous", "overlap": 0}),
    (3, {"anchor_len": 16, "passing_len": 8, "fused_query": 0}),
    (3, {"anchor_len": 16, "passing_len": 8, "query_pass": 1, "anchor_sharding": 0}),
]


@pytest.mark.parametrize("world,options", SPAVA_CASES,
                         ids=[f"{w}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for w, o in SPAVA_CASES])
def test_spava_matches_the_independent_reference(models, world, options):
    path, model = models["llama"]
    spy, doc, question, result = spied_run(model, path, "spava", world, options)
    assert len(spy.prefill) == world * model.config.num_hidden_layers
    errors = spava_errors(spy, doc, question, **spava_flags(options))
    assert max(errors.values()) <= TOLERANCE, errors
    assert len(result.tokens) == NEW_TOKENS


EXACT_ATTENTION = Kernels.attention


def _anchor_sees_passing(kernels, *args, **kwargs):
    """The attention call with the anchor rule dropped (anchor rows see the passed keys)."""
    return EXACT_ATTENTION(kernels, *args, **dict(kwargs, prefix_len=0))


@pytest.mark.parametrize("method", ["apb", "spava"])
def test_the_reference_catches_an_anchor_that_sees_passed_keys(models, monkeypatch, method):
    path, model = models["llama"]
    monkeypatch.setattr(Kernels, "attention", _anchor_sees_passing)
    options = {"anchor_len": 16, "passing_len": 8} if method == "spava" else {}
    spy, doc, question, _ = spied_run(model, path, method, 3, options)
    errors = (apb_errors if method == "apb" else spava_errors)(spy, doc, question)
    assert max(errors.values()) > 1e-3, errors


def test_the_masked_oracle_agrees_with_the_reference_kernel_row_by_row():
    """`attend_visible` (one masked softmax) equals the torch reference kernel run without a mask
    on exactly the keys each row sees, GQA included."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 12, 8, generator=generator)
    keys, values = torch.randn(1, 2, 20, 8, generator=generator), torch.randn(1, 2, 20, 8, generator=generator)
    visible = torch.rand(12, 20, generator=generator) < 0.4
    visible[3] = False  # a row that sees nothing
    expected = []
    for row in range(12):
        cols = visible[row].nonzero().flatten()
        out, _ = reference_attention(q[:, :, row : row + 1], keys[:, :, cols], values[:, :, cols], causal=False,
                                     scale=0.3)
        expected.append(out)
    torch.testing.assert_close(attend_visible(q, keys, values, visible, 0.3).float(), torch.cat(expected, dim=2),
                               rtol=0, atol=1e-6)
