"""Load a local Hugging Face causal LM and its tokenizer for longctx workers.

What differs between model families (the loading class, which sub-models use longctx's
attention, the language model's config) comes from the family's adapter
(`longctx.models.family.family_for`); this module names no family.
"""

import os

import torch

from longctx.errors import LongCtxError
from longctx.models.attention import probe_attention, register_attention
from longctx.models.family import family_for
from longctx.models.positions import apply_rope_scaling

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_model_dir(path, family=None, rope_scaling=None):
    """Raise LongCtxError unless `path` is a local Hugging Face model directory (config.json, no
    code of its own) whose model family can run it (`ModelFamily.check_config`: the default
    text adapter takes decoder-only causal LMs and refuses encoders, encoder-decoders and
    multimodal families without an adapter); returns its language model's config (the shape
    planners read). `family` names the adapter (None: the one the config's model type asks for).
    """
    adapter, config = model_family(path, family, rope_scaling)
    return adapter.language_config(config)


def model_family(path, family=None, rope_scaling=None):
    """(ModelFamily adapter, whole config) of the model directory `path`, after the checks of
    `check_model_dir`, with `rope_scaling` (a rope dict, `longctx.models.positions`) applied to
    its language model's config."""
    config = read_model_config(path)
    adapter = family_for(config, family)
    adapter.check_config(config, path)
    apply_rope_scaling(adapter.language_config(config), rope_scaling)
    return adapter, config


def read_model_config(path):
    """The whole config of the model directory `path` (transformers' AutoConfig, local files
    only, no code from the directory); LongCtxError (one line) for anything else."""
    from transformers import AutoConfig

    if not path:
        raise LongCtxError("no model given (--model DIR)")
    if not os.path.isdir(path):
        raise LongCtxError(f"model directory {path!r} does not exist")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise LongCtxError(f"{path!r} has no config.json: not a Hugging Face model directory")
    check_no_custom_code(path)
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (ValueError, OSError, KeyError) as exc:
        raise LongCtxError(f"cannot read the model config in {path!r}: {_first_line(exc)}") from None


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_no_custom_code(path):
    """LongCtxError when the model directory ships code of its own (`auto_map` in config.json or
    tokenizer_config.json, or .py files): longctx never runs code from a model directory; it
    needs a model class of transformers itself, whose attention it replaces."""
    import json

    for name in ("config.json", "tokenizer_config.json"):
        file = os.path.join(path, name)
        try:
            with open(file, encoding="utf-8") as handle:
                settings = json.load(handle)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            raise LongCtxError(f"cannot read {file!r}: {_first_line(exc)}") from None
        if isinstance(settings, dict) and "auto_map" in settings:
            raise LongCtxError(f"{path!r} ships its own modeling code ('auto_map' in {name}); longctx does not run "
                               "code from a model directory: use a model class transformers provides")
    scripts = sorted(name for name in os.listdir(path) if name.endswith(".py"))
    if scripts:
        raise LongCtxError(f"{path!r} ships Python code ({', '.join(scripts[:3])}); longctx does not run code from "
                           "a model directory: remove it, or use a model class transformers provides")


def check_weights(path):
    """LongCtxError unless the model's weights are safetensors files: pickle-based files (.bin,
    .pt, ...) can run code when they are loaded, so longctx never opens them. Called before
    loading (the driver, and every worker)."""
    names = os.listdir(path)
    if any(name.endswith(".safetensors") for name in names):
        return
    pickles = sorted(name for name in names if name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise LongCtxError(f"{path!r} holds its weights as pickle files ({', '.join(pickles[:2])}), which can run "
                           "code when loaded; longctx loads safetensors only (convert them on a machine you "
                           "trust: save_pretrained(dir, safe_serialization=True))")
    raise LongCtxError(f"{path!r} has no weights (*.safetensors)")


def resolve_device(device, rank=0):
    """torch.device for worker `rank`: 'auto' picks CUDA (round-robin over GPUs) when available."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise LongCtxError("--device cuda was asked for but no CUDA device is available")
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_dtype(dtype, device):
    """torch dtype: 'auto' is bfloat16 on CUDA and float32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPE_NAMES[dtype]


def quiet_libraries():
    """Silence Hugging Face progress bars and info logs (workers and CLI print their own output)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_model(path, device, dtype, family=None, rope_scaling=None):
    """Load the model at `path` on `device` in `dtype`, in eval mode, using longctx attention.

    The family's adapter (`family`: its name, None: by the config) gives the loading class and
    which sub-models use longctx attention (a video-language model's vision encoder keeps
    SDPA). `rope_scaling` (a rope dict) is applied to its config before it is built. The model
    is refused here, in one line, when its attention asks for a feature longctx does not
    implement (`probe_attention`).
    """
    adapter, config = model_family(path, family, rope_scaling)
    check_weights(path)
    quiet_libraries()
    try:
        model = adapter.model_class().from_pretrained(path, config=config, dtype=dtype, local_files_only=True,
                                                      use_safetensors=True, trust_remote_code=False)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise LongCtxError(f"cannot load the model in {path!r}: {_first_line(exc)}") from None
    model.set_attn_implementation(adapter.attention_implementation(register_attention()))
    model = model.to(device).eval()
    probe_attention(adapter.decoder(model))
    return model


def load_tokenizer(path):
    """The tokenizer saved with the model at `path`."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (ValueError, OSError, KeyError) as exc:
        raise LongCtxError(f"cannot load a tokenizer from {path!r}: {_first_line(exc)}") from None


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
