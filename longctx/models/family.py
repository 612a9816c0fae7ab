"""Model families: what differs between model families, behind one adapter.

A `ModelFamily` knows a family's prompt layout (`encode`), its extra inputs (a video's vision
embeddings, M-RoPE positions, the processor settings that make them), how those inputs are
built for the rows each host runs (`prefill_inputs`, `step_inputs`) and how its model loads.
The engine, the request code and the loader only call these methods; they never name a
family. Families with an adapter of their own are registered by model type in
`longctx.registry.FAMILIES` (one module under `longctx/families/` and one line there), or named
as a plug-in (`--family package.module:ClassName`, `RunConfig.family`); every other model is
served by `TextFamily`, the default adapter, through transformers' attention interface.

What a text family must satisfy to run on `TextFamily` (checked where it can be):

* a decoder-only causal LM class of transformers itself (`AutoModelForCausalLM`; no code from
  the model directory, safetensors weights), whose config gives `num_hidden_layers`,
  `hidden_size`, `num_attention_heads` (and `num_key_value_heads`, `head_dim`,
  `intermediate_size` where they differ from the defaults) and `max_position_embeddings`;
* every attention layer calls transformers' attention interface with post-RoPE q/k/v
  [B, H, S, D], `module.layer_idx`, and only keywords longctx implements (`longctx.features`:
  scale, soft-capping, sinks, a sliding window that covers the request); the model is
  refused when it loads otherwise (`longctx.models.attention.probe_attention`);
* positions are given as `position_ids` [1, S] (any order, any gaps: a host runs its rows at
  their true positions), and nothing but attention mixes information across positions;
* `model.base_model(input_ids | inputs_embeds, position_ids, use_cache=False)` returns
  `last_hidden_state`, and the output embeddings (plus `final_logit_softcapping` when the
  config has it) turn a final hidden state into logits.
"""

import torch

from longctx.errors import LongCtxError
from longctx.registry import FAMILIES, family_class


def encode_prompt(tokenizer, document, question):
    """Token ids (doc_ids, query_ids) of a text prompt: the default layout.

    The document gets the tokenizer's special prefix (BOS); the question none. An empty
    question moves the document's last token into the query pass, which needs >= 1 token.
    """
    if not document or not document.strip():
        raise LongCtxError("the document is empty")
    doc_ids = tokenizer(document, add_special_tokens=True)["input_ids"]
    query_ids = tokenizer(question, add_special_tokens=False)["input_ids"] if question else []
    if not query_ids:
        doc_ids, query_ids = doc_ids[:-1], doc_ids[-1:]
    if not doc_ids:
        raise LongCtxError("the document is empty")
    return doc_ids, query_ids


class ModelFamily:
    """The adapter of one model family; `TextFamily` is the default.

    `name` is how errors and `--help` name the family, `media` the kind of extra input its
    prompts carry ("video"; None for text); `model_type` is the served config's model type.
    Driver side: `check_config`, `language_config`, `encode`, `split_media`; loading:
    `model_class`, `attention_implementation`; worker side (the engine): `decoder`,
    `prefill_inputs`, `step_inputs`, `logits`. A family that can write a small random model
    for tests sets `tiny_tokens` (special tokens its tokenizer needs) and `write_tiny`.
    """

    name = "base"
    title = "base"
    media = None
    tiny_tokens = None

    def __init__(self, model_type=None):
        self.model_type = model_type

    # -- the driver: is this model supported, and what does a prompt become

    def check_config(self, config, path):
        """LongCtxError unless the model at `path` (its config `config`) can run."""

    def language_config(self, config):
        """The config of the language model (what planners and length checks read)."""
        return config

    def check_modality(self, has_video):
        """LongCtxError when a prompt brings a video this family takes none of, or lacks the
        video its prompts are made of."""
        if self.media is None and has_video:
            takers = [name for name in FAMILIES if family_class(name).media == "video"]
            raise LongCtxError(f"a video needs a video-language model ({', '.join(takers)}); this is a text-only "
                               f"{self.model_type!r} model")
        if self.media is not None and not has_video:
            raise LongCtxError(f"this is a {self.media}-language model ({self.title}): give a {self.media} "
                               f"(--{self.media} FILE, or {self.media}= in Python) and a question")

    def encode(self, tokenizer, model_dir, prompt):
        """(doc_ids, query_ids, media) of a `longctx.request.Prompt` (its modality already
        checked); `media` is the extra input the workers' `prefill_inputs` turn into model
        inputs (picklable), None for text."""
        raise NotImplementedError

    def split_media(self, media, world, encoder_split):
        """[start, stop) of `media` each of `world` workers receives (`media.share(start, stop)`,
        `Request.for_rank`), or None: every worker gets all of it. `encoder_split`: each worker
        encodes only its share (`Method.encoder_split`). LongCtxError when the media cannot be
        split over that many workers. Default: not split."""
        return None

    # -- loading

    def model_class(self):
        """The transformers class that loads the model."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def attention_implementation(self, name):
        """The `set_attn_implementation` argument that gives the language model attention `name`."""
        return name

    def hf_inputs(self, model, input_ids, media):
        """Keywords beside `input_ids` [1, S] that give the model's own forward `media` (the
        Hugging Face baseline of a request with media); default: none."""
        return {}

    # -- the workers (the engine)

    def decoder(self, model):
        """The decoder stack the prefill runs (returns `last_hidden_state`)."""
        return model.base_model

    def encoder(self, model):
        """The media encoder a prefill runs before the decoder (a vision tower), or None (text)."""
        return None

    def prefill_inputs(self, model, ctx, request):
        """Model keywords of this worker's prefill rows (`ctx.method.local_inputs` decides which
        tokens, at which positions); may keep per-request state in `ctx.inputs`."""
        raise NotImplementedError

    def step_inputs(self, model, ctx, ids, positions):
        """Model keywords of new tokens `ids` at sequence positions `positions` (query pass, decoding)."""
        device = model.device
        return {"input_ids": torch.tensor([ids], device=device), "position_ids": torch.tensor([positions], device=device)}

    def logits(self, model, hidden):
        """Logits [n, vocab] of final hidden states `hidden` [n, d] (a fused query pass's rows),
        as the model's own head computes them (final logit soft-capping included)."""
        logits = model.get_output_embeddings()(hidden)
        cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        return logits if cap is None else cap * torch.tanh(logits / cap)


class TextFamily(ModelFamily):
    """Every decoder-only causal LM of transformers (the contract in the module docstring): a
    prompt is the document (with the tokenizer's BOS), then the question; no extra inputs."""

    name = "text"
    title = "text"

    def check_config(self, config, path):
        """Refuse multimodal families without an adapter, and encoders transformers also maps
        to a causal-LM class (BERT, RoBERTa, ...: every type with a masked-LM head) and
        encoder-decoder models."""
        from transformers import AutoModelForCausalLM
        from transformers.models.auto.modeling_auto import (MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
                                                            MODEL_FOR_MASKED_LM_MAPPING_NAMES)

        if hasattr(config, "vision_config") or config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
            raise LongCtxError(f"{path!r} holds a {config.model_type!r} model, a multimodal family longctx does not "
                               f"support; the supported multimodal families are {', '.join(FAMILIES)}, or use a "
                               "text-only causal LM")
        if type(config) not in AutoModelForCausalLM._model_mapping:
            raise LongCtxError(f"{path!r} holds a {config.model_type!r} model, which is not a causal LM")
        if getattr(config, "is_encoder_decoder", False) or config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            raise LongCtxError(f"{path!r} holds a {config.model_type!r} model, an encoder (its causal-LM class runs "
                               "the encoder as a decoder); longctx needs a decoder-only causal LM such as Llama, "
                               "Qwen2 or Mistral")

    def encode(self, tokenizer, model_dir, prompt):
        """`encode_prompt` of the document and question."""
        return (*encode_prompt(tokenizer, prompt.document, prompt.question), None)

    def prefill_inputs(self, model, ctx, request):
        """input_ids / position_ids of the tokens `ctx.method.local_inputs` gives this worker."""
        ids, positions = ctx.method.local_inputs(ctx.plan, ctx.rank, request.doc_ids, request.query_ids)
        return self.step_inputs(model, ctx, ids, positions)


def family_for(config, name=None):
    """The ModelFamily serving `config` (a model's whole config): the one `name` names (a
    registered family or a plug-in path) when given, else the family registered for its model
    type, else `TextFamily`. LongCtxError when `name` does not import."""
    model_type = getattr(config, "model_type", None)
    if name:
        return family_class(name)(model_type)
    return family_class(model_type)(model_type) if model_type in FAMILIES else TextFamily(model_type)
