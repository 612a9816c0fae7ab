"""Hugging Face integration: loading models, registering longctx attention, tiny test models."""

from longctx.models.attention import ATTN_NAME, register_attention
from longctx.models.loading import (check_model_dir, check_weights, load_model, load_tokenizer, model_family,
                                    resolve_device, resolve_dtype)

__all__ = [
    "ATTN_NAME",
    "register_attention",
    "check_model_dir",
    "check_weights",
    "load_model",
    "load_tokenizer",
    "model_family",
    "resolve_device",
    "resolve_dtype",
]
