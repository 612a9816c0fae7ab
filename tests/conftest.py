"""Shared fixtures: tiny random-weight models (written once per session) and worker pools."""

import os

# Triton kernels run on the CPU only under its interpreter, and the flag must be set before
# any module imports triton (transformers and the kernel module may, in any test order).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from longctx.comm import Comm  # noqa: E402
from longctx.config import RunConfig
from longctx.engine import Engine, Request
from longctx.models import load_model
from longctx.models.tiny import make_tiny_model

# name -> (family, hidden, layers, heads, kv_heads)
TINY_MODELS = {
    "llama": ("llama", 64, 2, 4, 2),
    "llama-mha": ("llama", 64, 2, 4, 4),
    "llama-gqa4": ("llama", 64, 2, 8, 2),
    "qwen2": ("qwen2", 64, 2, 4, 2),
    "mistral": ("mistral", 64, 2, 4, 2),
}


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


def dense_result(model_dir, doc_ids, query_ids, max_new_tokens=6):
    """Single-process dense engine result with hidden states (the exactness reference)."""
    model = load_model(model_dir, torch.device("cpu"), torch.float32)
    engine = Engine(model, Comm(), RunConfig(model=model_dir, method="dense", nproc=1), torch.device("cpu"))
    return engine.run(Request(doc_ids, query_ids, max_new_tokens, "dense", True))


def relative_error(result, reference):
    """Relative error of document + question final hidden states."""
    value = torch.cat([result["doc_hidden"], result["query_hidden"]])
    ref = torch.cat([reference["doc_hidden"], reference["query_hidden"]])
    return float((value - ref).norm() / ref.norm())
