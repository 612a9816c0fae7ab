"""Write small random-weight causal LMs with a working byte-level tokenizer (tests, cluster smoke tests)."""

import json
import os

import torch

from longctx.errors import LongCtxError
from longctx.registry import family_class, family_names

TEXT_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")


def tiny_families():
    """Families `make_tiny_model` writes: TEXT_FAMILIES, then the registered model families
    whose adapter writes a tiny model (`ModelFamily.write_tiny`)."""
    return [*TEXT_FAMILIES, *(name for name in family_names() if family_class(name).tiny_tokens is not None)]


def _byte_tokenizer(extra=()):
    """A byte-level `tokenizers` tokenizer: SPECIAL_TOKENS, 256 byte symbols, then the special
    tokens `extra`, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    for token in extra:
        vocab[token] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.add_special_tokens(list(extra))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _config(family, vocab_size, hidden, layers, heads, kv_heads, max_positions, intermediate):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common, use_sliding_window=False)
    if family == "qwen3":  # q/k RMSNorm per head; its head_dim is a field of its own
        return Qwen3Config(**common, head_dim=hidden // heads, use_sliding_window=False)
    return MistralConfig(**common, sliding_window=None)


def make_tiny_model(out_dir, family="llama", hidden=64, layers=2, heads=4, kv_heads=2, seed=0,
                    max_positions=32768, intermediate=None, max_pixels=None):
    """Write a random-weight `family` model and its byte-level tokenizer to `out_dir`.

    `family` is one of `tiny_families()`; `intermediate` is the MLP width (default 2 * hidden);
    `max_pixels` (a video family's) the video processor's pixel bound per frame (default: the
    family's).
    The result loads with AutoModelForCausalLM / AutoTokenizer.from_pretrained; weights are
    scaled so activations stay well-conditioned in fp32. Returns `out_dir`.
    """
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    if family not in tiny_families():
        raise LongCtxError(f"unknown model family {family!r}; choose one of {', '.join(tiny_families())}")
    if heads % kv_heads or hidden % heads:
        raise LongCtxError("heads must divide hidden size and kv_heads must divide heads")
    if family not in TEXT_FAMILIES:
        adapter = family_class(family)(family)
        adapter.write_tiny(out_dir, _byte_tokenizer(adapter.tiny_tokens), hidden, layers, heads, kv_heads, seed,
                           max_positions, intermediate, max_pixels)
        return _mark(out_dir, family, seed)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_byte_tokenizer(), bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.add_bos_token = True
    config = _config(family, len(tokenizer), hidden, layers, heads, kv_heads, max_positions,
                     intermediate or 2 * hidden)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return _mark(out_dir, family, seed)


def _mark(out_dir, family, seed):
    """Write longctx_tiny.json (what was written, and that it is random) to `out_dir`; returns `out_dir`."""
    with open(os.path.join(out_dir, "longctx_tiny.json"), "w") as handle:
        json.dump({"family": family, "seed": seed, "note": "random weights, for tests only"}, handle)
    return out_dir
