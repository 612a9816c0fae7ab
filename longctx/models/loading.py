"""Load a local Hugging Face causal LM and its tokenizer for longctx workers."""

import os

import torch

from longctx.errors import LongCtxError
from longctx.models.attention import register_attention
from longctx.models.qwen_vl import VIDEO_FAMILIES, is_video_model, video_model_class

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_model_dir(path):
    """Raise LongCtxError unless `path` is a local Hugging Face decoder-only causal-LM directory
    or a supported video-language model (Qwen2.5-VL); returns its config (of a video-language
    model: its language model's config, which holds the shape the planners read). Other
    multimodal families are refused as unsupported. Encoder models that transformers also maps to a causal-LM class (BERT,
    RoBERTa, ...: every type with a masked-LM head) and encoder-decoder models are refused."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import (MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    if not path:
        raise LongCtxError("no model given (--model DIR)")
    if not os.path.isdir(path):
        raise LongCtxError(f"model directory {path!r} does not exist")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise LongCtxError(f"{path!r} has no config.json: not a Hugging Face model directory")
    check_no_custom_code(path)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (ValueError, OSError, KeyError) as exc:
        raise LongCtxError(f"cannot read the model config in {path!r}: {_first_line(exc)}") from None
    if is_video_model(config):
        return config.get_text_config()
    if hasattr(config, "vision_config") or config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise LongCtxError(f"{path!r} holds a {config.model_type!r} model, a multimodal family longctx does not "
                           f"support; the supported video-language family is {', '.join(VIDEO_FAMILIES)} "
                           "(Qwen2.5-VL), or use a text-only causal LM")
    if type(config) not in AutoModelForCausalLM._model_mapping:
        raise LongCtxError(f"{path!r} holds a {config.model_type!r} model, which is not a causal LM")
    if getattr(config, "is_encoder_decoder", False) or config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise LongCtxError(f"{path!r} holds a {config.model_type!r} model, an encoder (its causal-LM class runs "
                           "the encoder as a decoder); longctx needs a decoder-only causal LM such as Llama, "
                           "Qwen2 or Mistral")
    return config


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


def load_model(path, device, dtype):
    """Load the causal LM at `path` on `device` in `dtype`, in eval mode, using longctx attention.

    A video-language model (Qwen2.5-VL) loads with its own class; its language model uses
    longctx attention and its vision encoder SDPA (the encoder runs outside any worker context).
    """
    from transformers import AutoModelForCausalLM

    video = is_video_model(check_model_dir(path))
    check_weights(path)
    model_class = video_model_class() if video else AutoModelForCausalLM
    quiet_libraries()
    try:
        model = model_class.from_pretrained(path, dtype=dtype, local_files_only=True, use_safetensors=True,
                                            trust_remote_code=False)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise LongCtxError(f"cannot load the model in {path!r}: {_first_line(exc)}") from None
    name = register_attention()
    model.set_attn_implementation({"text_config": name, "vision_config": "sdpa"} if video else name)
    return model.to(device).eval()


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
