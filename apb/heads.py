"""Locret-style retaining heads: one small MLP per layer scoring every key for each KV head.

Head of layer l: concat(pre-RoPE q, k, v) of a token [q_dim + 2 * kv_dim] -> Linear ->
SiLU -> Linear -> [kv_heads] scores (higher = keep). Sizes come from the model config, so any
head count works. Stored as safetensors with the model's shape facts in the metadata; a file
made for another model is refused with one clear line.
"""

import os

import torch
from torch import nn

from longctx.errors import LongCtxError

FORMAT = "longctx-retaining-heads"


def projection_dims(model_config):
    """(num_layers, q_dim, kv_dim, kv_heads) of a Hugging Face decoder config."""
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    return model_config.num_hidden_layers, heads * head_dim, kv_heads * head_dim, kv_heads


class RetainingHeads(nn.Module):
    """Per-layer MLPs; `forward(layer, q, k, v)` maps [B, S, *] projections to [B, S, kv_heads] fp32 scores."""

    def __init__(self, num_layers, q_dim, kv_dim, kv_heads, hidden=256):
        super().__init__()
        self.dims = (num_layers, q_dim, kv_dim, kv_heads)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(q_dim + 2 * kv_dim, hidden), nn.SiLU(), nn.Linear(hidden, kv_heads))
            for _ in range(num_layers)
        )

    @classmethod
    def for_model(cls, model_config, hidden=256):
        """Freshly initialised heads sized for `model_config`."""
        return cls(*projection_dims(model_config), hidden=hidden)

    def forward(self, layer, q, k, v):
        """Scores [B, S, kv_heads] (float32) from pre-RoPE q [B, S, q_dim], k/v [B, S, kv_dim]."""
        features = torch.cat([q, k, v], dim=-1).float()
        return self.layers[layer](features)

    def save(self, path):
        """Write the heads and their shape facts to the safetensors file `path`."""
        from safetensors.torch import save_file

        num_layers, q_dim, kv_dim, kv_heads = self.dims
        metadata = {"format": FORMAT, "num_layers": str(num_layers), "q_dim": str(q_dim),
                    "kv_dim": str(kv_dim), "kv_heads": str(kv_heads)}
        tensors = {name: tensor.detach().float().contiguous() for name, tensor in self.state_dict().items()}
        save_file(tensors, path, metadata=metadata)

    @classmethod
    def load(cls, path, model_config):
        """Heads from `path` (float32, CPU), after `check_file`; LongCtxError on any mismatch."""
        from safetensors.torch import load_file

        hidden = check_file(path, model_config)
        heads = cls.for_model(model_config, hidden=hidden)
        heads.load_state_dict(load_file(path))
        return heads.eval()


def check_file(path, model_config):
    """Raise LongCtxError unless `path` holds retaining heads for `model_config`; returns the MLP width.

    Reads only the header (cheap): the driver calls it before starting any work.
    """
    from safetensors import SafetensorError, safe_open

    if not path:
        raise LongCtxError("--compressor retaining-heads needs --retaining-heads FILE (train one with python -m apb.train_heads)")
    if not os.path.isfile(path):
        raise LongCtxError(f"retaining-heads file {path!r} does not exist")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LongCtxError(f"cannot read retaining heads from {path!r}: {str(exc).splitlines()[0]}") from None
    if metadata.get("format") != FORMAT:
        raise LongCtxError(f"{path!r} is not a retaining-heads file (made by python -m apb.train_heads)")
    num_layers, q_dim, kv_dim, kv_heads = projection_dims(model_config)
    first = shapes.get("layers.0.0.weight")
    hidden = first[0] if first else 0
    expected = {}
    for layer in range(num_layers):
        expected.update({
            f"layers.{layer}.0.weight": (hidden, q_dim + 2 * kv_dim), f"layers.{layer}.0.bias": (hidden,),
            f"layers.{layer}.2.weight": (kv_heads, hidden), f"layers.{layer}.2.bias": (kv_heads,),
        })
    if shapes != expected:
        raise LongCtxError(
            f"retaining heads in {path!r} are for another model (file: {metadata.get('num_layers')} layers, "
            f"input {metadata.get('q_dim')}+2x{metadata.get('kv_dim')}, {metadata.get('kv_heads')} KV heads; "
            f"model: {num_layers} layers, input {q_dim}+2x{kv_dim}, {kv_heads} KV heads)"
        )
    return hidden
