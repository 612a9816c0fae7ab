"""Compare methods with the single-process dense reference on the same random input.

Used by `longctx compare` and by the tests: final hidden states of every document and
question token, the logits of the first generated position, and the greedy continuation. With
a video (a video-language model) the input is that video and a question instead of random
token ids, through the model family's adapter; HF SDPA's forward then runs the vision encoder
too.
Timings: each method's time to first token (prefill + query pass, after one untimed warm-up
request of the first method) against Hugging Face's own SDPA forward of the same tokens,
measured in this process before the workers start (`longctx.baseline`).
"""

import torch

from longctx.api import LongContextLM
from longctx.baseline import HFSDPABaseline, speedup
from longctx.comm import ProcessGroupComm
from longctx.engine import Engine, Request
from longctx.models import load_model, resolve_device, resolve_dtype
from longctx.request import Session


def random_prompt(vocab_size, length, query_len, seed):
    """Seeded random (doc_ids, query_ids) avoiding the first 3 ids (usually special tokens)."""
    generator = torch.Generator().manual_seed(seed)
    low = 3 if vocab_size > 8 else 0
    ids = torch.randint(low, vocab_size, (length + query_len,), generator=generator).tolist()
    return ids[:length], ids[length:]


def dense_reference(config, doc_ids, query_ids, max_new_tokens, stop=(), media=None):
    """Run `dense` in this process (no process group); returns the EngineResult with hidden
    states. `stop` are the ids that end generation: pass the ones the compared methods get
    (`LongContextLM.stop_ids`) so that the reference stops where they do; `media` the family's
    extra input (a video), None for text."""
    device = resolve_device(config.device)
    model = load_model(config.model, device, resolve_dtype(config.dtype, device), config.family, config.rope_scaling)
    engine = Engine(model, ProcessGroupComm(), config.replace(method="dense", nproc=1), device)
    return engine.run(Request(doc_ids, query_ids, max_new_tokens, "dense", True, tuple(stop), media))


def relative_error(value, reference):
    """||value - reference|| / ||reference|| in fp32."""
    return float((value.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-30))


def compare_methods(config, methods, length, query_len=8, max_new_tokens=8, seed=0, lm=None,
                    baseline_repeats=3, video=None):
    """Run each method in `methods` on `config.nproc` workers and measure it against dense.

    The input is `length` + `query_len` seeded random token ids, or with `video` (a
    `longctx.request.Prompt` holding a video and a question) that prompt as the model family
    encodes it.

    Returns {"reference": {...}, "hf_sdpa": BaselineTiming dict or None, "results": [{method,
    hidden_rel_err, logits_max_abs_err, tokens, tokens_match, prefill_s, query_s, ttft_s,
    speedup_vs_hf, ...}]}. `baseline_repeats` > 0 times HF SDPA (median of that many forwards)
    before any worker starts; `lm` reuses a running LongContextLM, whose workers would compete
    for the cores, so it needs `baseline_repeats=0` (speed-ups are then None).
    """
    if lm is not None and baseline_repeats:
        raise ValueError("compare_methods: time the HF baseline before starting `lm` (baseline_repeats=0)")
    config.resolve_model()
    session = lm.session if lm is not None else Session(config.replace(method=methods[0]))
    model_config, stop = session.model_config, session.stop_ids  # what the methods stop at
    media = None
    if video is not None:
        session.family.check_modality(True)
        doc_ids, query_ids, media = session.family.encode(session.tokenizer, config.model, video)
    else:
        session.family.check_modality(False)
        doc_ids, query_ids = random_prompt(model_config.vocab_size, length, query_len, seed)
    reference = dense_reference(config, doc_ids, query_ids, max_new_tokens, stop, media)
    ref_hidden = torch.cat([reference.doc_hidden, reference.query_hidden])
    baseline = None
    if baseline_repeats:
        with HFSDPABaseline(config.model, config.device, config.dtype, config.rope_scaling) as hf:
            baseline = hf.time(doc_ids, query_ids, baseline_repeats, media=media)
    hf_s = baseline.median_s if baseline else None
    owns_lm = lm is None
    lm = lm or LongContextLM.from_session(session)
    rows = []
    try:
        lm.run(lm.session.prepare_ids(doc_ids, query_ids, 1, methods[0], media=media))  # warm-up, not timed
        for method in methods:
            result = lm.run(lm.session.prepare_ids(doc_ids, query_ids, max_new_tokens, method, True, media))
            hidden = torch.cat([result.doc_hidden, result.query_hidden])
            rows.append({
                "method": method,
                "hidden_rel_err": relative_error(hidden, ref_hidden),
                "logits_max_abs_err": float((result.first_logits - reference.first_logits).abs().max()),
                "tokens": result.tokens,
                "tokens_match": result.tokens == reference.tokens,
                "prefill_s": result.prefill_s,
                "query_s": result.query_s,
                "ttft_s": result.ttft_s,
                "speedup_vs_hf": speedup(hf_s, result.ttft_s),
                "decode_s": result.decode_s,
                "plan": result.plan,
            })
    finally:
        if owns_lm:
            lm.close()
    return {
        "length": len(doc_ids),
        "query_len": len(query_ids),
        "media": None if media is None else media.describe(),
        "nproc": config.nproc,
        "reference": {"method": "dense", "tokens": reference.tokens, "prefill_s": reference.prefill_s},
        "hf_sdpa": baseline.to_dict() if baseline else None,
        "results": rows,
    }
