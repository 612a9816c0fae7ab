"""Attention features a model's layers ask for are computed exactly or refused in one line.

Tiny random Gemma 2 (logit soft-capping 0.5 and final logit soft-capping 2.0, weights drawn
with std 0.2 so the caps bite) and gpt-oss (attention sinks drawn around 2.0) against
transformers' own eager forward of the same weights, on 1-4 simulated workers with every exact
method and APB / Spava in their exact configurations (Spava's fused query pass also checks the
final soft-capping of the family adapter's logits). Measured when a feature is dropped
(planted): the first logits differ by 2.7e-1 (soft-capping) and 5.5e-2 (sinks) relative;
computed, by at most 9e-7. Runtime on 2 shared cores: about 30 s.
"""

import pytest
import torch

from helpers import run_workers
from longctx.config import RunConfig
from longctx.engine import Request
from longctx.errors import LongCtxError
from longctx.features import AttentionCall
from longctx.models import load_model

TOLERANCE = 1e-5
CASES = [("dense", 1, {}), ("ring", 2, {}), ("burst", 3, {}), ("allgather", 4, {}), ("ulysses", 2, {}),
         ("apb", 2, {"anchor_len": 0, "passing_ratio": 1.0}), ("spava", 2, {"anchor_len": 0, "passing_len": 10**6})]


def _save(model, path):
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    """A tiny Gemma 2 with attention logit soft-capping 0.5 and final soft-capping 2.0."""
    from transformers import AutoModelForCausalLM, Gemma2Config

    config = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, attn_logit_softcapping=0.5,
                          final_logit_softcapping=2.0, sliding_window=4096, max_position_embeddings=4096,
                          initializer_range=0.2, query_pre_attn_scalar=8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).float()
    return _save(model, tmp_path_factory.mktemp("gemma2"))


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory):
    """A tiny gpt-oss (mixture of experts) whose attention sinks are drawn around 2.0."""
    from transformers import AutoModelForCausalLM, GptOssConfig

    config = GptOssConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
                          num_experts_per_tok=2, sliding_window=4096, max_position_embeddings=4096, initializer_range=0.2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).float()
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.sinks.normal_(2.0, 1.0)
    return _save(model, tmp_path_factory.mktemp("gpt-oss"))


def transformers_logits(path, ids):
    """The last position's logits of transformers' own eager forward (fp32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, -1]


@pytest.mark.parametrize("family", ["gemma2", "gpt_oss"])
def test_features_equal_transformers_on_1_to_4_workers(family, request):
    path = request.getfixturevalue(family)
    ids = torch.randint(3, 64, (90,), generator=torch.Generator().manual_seed(1)).tolist()
    reference = transformers_logits(path, ids)
    model = load_model(path, torch.device("cpu"), torch.float32)
    for method, world, options in CASES:
        result = run_workers(model, RunConfig(model=path, method=method, **options),
                             Request(ids[:82], ids[82:], 2, method), world)
        error = float((result.first_logits - reference).norm() / reference.norm())
        assert error <= TOLERANCE, (family, method, world, error)


def test_soft_capping_with_a_kernel_that_cannot_apply_it_is_refused(gemma2):
    model = load_model(gemma2, torch.device("cpu"), torch.float32)
    config = RunConfig(model=gemma2, method="dense", nproc=1, kernel_backend="triton")
    with pytest.raises(LongCtxError, match="caps attention logits .soft-capping 0.5., which the triton kernel backend "
                                           "cannot apply; use --kernel-backend auto or reference"):
        run_workers(model, config, Request(list(range(3, 40)), [5], 1, "dense"), 1)


def test_an_unknown_attention_keyword_refuses_the_model(tiny_model):
    """A keyword transformers passes down to the attention (here a packed-sequence boundary, as
    flash-attention varlen callers pass) that longctx does not implement: one line naming it."""
    from longctx.models.attention import FeatureProbe

    model = load_model(tiny_model("llama"), torch.device("cpu"), torch.float32)
    with pytest.raises(LongCtxError, match="asks for 'cu_seq_lens_q', an attention feature longctx does not "
                                           "implement") as info:
        model.base_model(input_ids=torch.tensor([[3, 4, 5]]), longctx=FeatureProbe(),
                         cu_seq_lens_q=torch.tensor([0, 3]))
    assert "\n" not in str(info.value)


def test_attention_call_reads_every_keyword():
    module = torch.nn.Module()
    call = AttentionCall.of(module, scaling=0.5, dropout=0.0, sliding_window=None, softcap=30.0, position_ids=[0],
                            output_hidden_states=True, longctx=object())
    assert (call.scale, call.softcap, call.sinks, call.window) == (0.5, 30.0, None, None)
    with pytest.raises(LongCtxError, match="uses dropout"):
        AttentionCall.of(module, scaling=0.5, dropout=0.1)
    with pytest.raises(LongCtxError, match="is bidirectional"):
        AttentionCall.of(module, scaling=0.5, is_causal=False)
    assert AttentionCall.of(module, block_table=None).scale is None  # None: the feature is not used


def test_a_sliding_window_shorter_than_the_request_is_refused(tmp_path):
    from transformers import AutoModelForCausalLM, MistralConfig

    config = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=16)
    path = _save(AutoModelForCausalLM.from_config(config), tmp_path)
    model = load_model(path, torch.device("cpu"), torch.float32)
    with pytest.raises(LongCtxError, match=r"sliding-window attention \(window 16\) shorter than the sequence "
                                           r"\(41 tokens\)"):
        run_workers(model, RunConfig(model=path, method="ring"), Request(list(range(3, 40)), [5, 6], 2, "ring"), 2)
