"""How far a model may go: RoPE scaling applied to the loaded configuration, and the longest
request (`--rope-scaling`, `--max-model-len`, as vLLM names them).

`--rope-scaling` is transformers' rope dict (`{"rope_type": "yarn", "factor": 4.0,
"original_max_position_embeddings": 32768}`; the older key "type" is accepted), merged over the
model's own rope parameters (so its `rope_theta` stays) before the model is built: the rotary
embedding is then transformers' own, on every worker and in the Hugging Face baseline alike.
The request limit is `--max-model-len` when given, else the model's positions
(`max_position_embeddings`) times the scaling factor when one is given (vLLM's rule), else the
model's positions. `--max-model-len` past that is refused: it would run positions the model
was neither trained nor scaled for.

RoPE types whose frequencies follow the length of each forward ("dynamic" NTK, "longrope") are
refused: every worker runs a forward of its own share, so they would rotate the same position
differently on different workers, and differently from one forward over the whole request.
"""

import argparse
import json

from longctx.errors import LongCtxError

LENGTH_DEPENDENT = ("dynamic", "longrope")  # transformers' `dynamic_rope_update` types


def parse_rope_scaling(text):
    """argparse type of --rope-scaling: a JSON object -> dict."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"must be a JSON object, e.g. '{{\"rope_type\": \"yarn\", \"factor\": 4.0}}' "
                         f"({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"rope_type\": \"yarn\", \"factor\": 4.0}'")
    return value


def apply_rope_scaling(config, rope_scaling):
    """Set `rope_scaling` (a dict, None: leave the model's) on `config`, the language model's
    transformers config, merged over its own rope parameters and checked by transformers'
    own validation; returns `config`. LongCtxError (one line) for a dict transformers refuses."""
    if not rope_scaling:
        return config
    given = dict(rope_scaling)
    if "type" in given:
        given.setdefault("rope_type", given.pop("type"))
    if "rope_type" not in given:
        raise LongCtxError("--rope-scaling needs a \"rope_type\" (e.g. \"yarn\", \"linear\", \"dynamic\", \"llama3\")")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    factor = given.get("factor")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1):
        raise LongCtxError(f"--rope-scaling: \"factor\" must be a number >= 1 (got {factor!r})")

    known = ["default", *ROPE_INIT_FUNCTIONS]
    if given["rope_type"] not in known:
        raise LongCtxError(f"--rope-scaling: unknown rope_type {given['rope_type']!r}; transformers knows "
                           f"{', '.join(known)}")
    if given["rope_type"] in LENGTH_DEPENDENT:
        raise LongCtxError(f"--rope-scaling: rope_type {given['rope_type']!r} changes its frequencies with the length "
                           "of each forward, which differs between longctx's workers (each runs its own share), so "
                           "it would not be exact; use \"yarn\", \"linear\" or \"llama3\"")
    own = getattr(config, "rope_parameters", None) or {}
    if not isinstance(own, dict) or "rope_type" not in own and any(isinstance(v, dict) for v in own.values()):
        raise LongCtxError(f"--rope-scaling: this model ({config.model_type}) keeps per-layer rope parameters, "
                           "which longctx does not override")
    merged = {**own, **given}
    if given["rope_type"] != own.get("rope_type", "default"):  # keep only the base settings of the old type
        merged = {**{key: own[key] for key in ("rope_theta", "partial_rotary_factor", "mrope_section") if key in own},
                  **given}
    previous = config.rope_parameters
    config.rope_parameters = merged
    try:
        config.standardize_rope_params()
        config.validate_rope()
    except (ValueError, KeyError, TypeError) as exc:
        config.rope_parameters = previous
        text = str(exc).strip().splitlines()
        raise LongCtxError(f"--rope-scaling {json.dumps(rope_scaling)}: {text[0] if text else type(exc).__name__}") \
            from None
    return config


def position_limit(config, rope_scaling=None, max_model_len=None):
    """The most tokens (document + question + new tokens) one request may hold on the model
    whose language config is `config` (after `apply_rope_scaling`); None when the model states
    no limit. See the module docstring for the rule."""
    positions = getattr(config, "max_position_embeddings", None)
    factor = (rope_scaling or {}).get("factor")
    scaled = positions
    if positions and factor and float(factor) > 1:
        base = (rope_scaling or {}).get("original_max_position_embeddings") or positions
        scaled = int(base * float(factor))
    if max_model_len is None:
        return scaled
    if max_model_len < 1:
        raise LongCtxError(f"--max-model-len must be at least 1 (got {max_model_len})")
    if scaled and max_model_len > scaled:
        how = ("with this --rope-scaling" if factor else "extend them with --rope-scaling, e.g. "
               "'{\"rope_type\": \"yarn\", \"factor\": 4.0}'")
        raise LongCtxError(f"--max-model-len {max_model_len} is more than the model's {scaled} positions ({how})")
    return max_model_len
