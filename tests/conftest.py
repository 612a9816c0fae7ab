"""Shared fixtures: tiny random-weight models, written once per session (helpers live in helpers.py);
the seed of the run's property-based tests.

Hypothesis draws every test's examples from one seed per run: `--hypothesis-seed N` when given,
else 0 when the `CI` environment variable is set (so CI fuzzes the same cases every time), else
a fresh one. The seed is printed at the end of the run with the option that replays it.
Every test runs with HF_HUB_OFFLINE=1.
"""

import os
import random

# Triton kernels run on the CPU only under its interpreter, and the flag must be set before
# any module imports triton (transformers and the kernel module may, in any test order).
os.environ.setdefault("TRITON_INTERPRET", "1")
# No test reaches the Hugging Face Hub: a model name that is no local directory is looked up in the
# cache only (huggingface_hub reads this when first imported; subprocesses inherit it).
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from longctx.models.tiny import make_tiny_model  # noqa: E402

# name -> (family, hidden, layers, heads, kv_heads)
TINY_MODELS = {
    "llama": ("llama", 64, 2, 4, 2),
    "llama-mha": ("llama", 64, 2, 4, 4),
    "llama-gqa4": ("llama", 64, 2, 8, 2),
    "qwen2": ("qwen2", 64, 2, 4, 2),
    "qwen3": ("qwen3", 64, 2, 4, 2),
    "mistral": ("mistral", 64, 2, 4, 2),
}


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Choose the run's Hypothesis seed (before the Hypothesis plugin reads `--hypothesis-seed`)."""
    if config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = "0" if os.environ.get("CI") else str(random.randrange(2 ** 32))


def pytest_terminal_summary(terminalreporter, config):
    """Print the Hypothesis seed of this run and how to replay it."""
    seed = config.getoption("hypothesis_seed")
    terminalreporter.write_line(f"hypothesis seed {seed}: replay this run's fuzzed cases with --hypothesis-seed={seed}")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Function name -> directory of that tiny model, created on first use."""
    made = {}

    def get(name="llama"):
        if name not in made:
            family, hidden, layers, heads, kv_heads = TINY_MODELS[name]
            path = tmp_path_factory.mktemp(f"tiny-{name}")
            made[name] = make_tiny_model(str(path), family, hidden, layers, heads, kv_heads, seed=1)
        return made[name]

    return get


@pytest.fixture(scope="session")
def word_model(tmp_path_factory):
    """A tiny random Llama with the eval word-level tokenizer (so ~300 tokens hold a needle task)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from longctx.eval.tokenizer import save_tokenizer

    out = str(tmp_path_factory.mktemp("tiny-word-llama"))
    tokenizer = save_tokenizer(out)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    with torch.random.fork_rng():  # seeded weights, the calling test's RNG untouched
        torch.manual_seed(3)
        model = LlamaForCausalLM(config)
    with torch.no_grad():  # never end at once, so the answers compared below are real tokens
        model.lm_head.weight[tokenizer.eos_token_id] = 0
    model.save_pretrained(out)
    return out
