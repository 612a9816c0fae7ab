"""What `longctx generate` and the torchrun entry print about an answer, beside the answer itself.

`summary_lines` says which method ran where, how the document was split over the workers and
how long each phase took; `answer_notes` says, in one line each, when an answer is likely to
disappoint for a reason the user can act on (nothing was generated, the first token ended it,
most of the document is words the tokenizer does not know). Both entries print the same lines.
"""


def summary_lines(result, media=None):
    """The lines printed after an answer: method and workers, the document (or `media`, the
    family's extra input, whose `describe()` names it) and question sizes, each worker's share
    of the document, and the prefill, query and decode times. `result` is a GenerationResult."""
    workers = f"{result.nproc} worker{'s' if result.nproc != 1 else ''}"
    what = "document" if media is None else media.describe() + ","
    lines = [f"method {result.method} on {workers}: {what} {result.doc_tokens} tokens, "
             f"question {result.question_tokens} tokens"]
    hosts = result.plan.get("hosts") or []
    if len(hosts) > 1:
        shares = " / ".join(f"{host['tokens']:,}" for host in hosts)
        lines.append(f"split ({result.plan.get('layout')} layout): {shares} document tokens per worker")
    lines.append(f"prefill {result.prefill_s:.3f} s ({result.prefill_tokens_per_s:,.0f} tok/s), "
                 f"query {result.query_s:.3f} s, decode {result.decode_s:.3f} s for {len(result.tokens)} tokens")
    return lines


UNKNOWN_SHARE = 0.5  # above this share of <unk> tokens the document is mostly lost on the model


def answer_notes(result, request, tokenizer, stop_ids=()):
    """One-line notes (without a prefix) on an answer a user may find wanting, each with its
    reason: nothing was generated, the first token ended the answer (which token), the answer
    is only special tokens, or more than half of the document's tokens are the tokenizer's
    unknown token (the model saw mostly `<unk>`). `request` is the Request the result answers."""
    notes = []
    unknown = getattr(tokenizer, "unk_token_id", None)
    if unknown is not None and request.doc_ids:
        share = sum(token == unknown for token in request.doc_ids) / len(request.doc_ids)
        if share > UNKNOWN_SHARE:
            notes.append(f"{share:.0%} of the document's {len(request.doc_ids):,} tokens are unknown to the model's "
                         f"tokenizer ({tokenizer.unk_token}): the model saw mostly that one token; its vocabulary "
                         f"does not cover this text")
    if not result.tokens:
        notes.append("no token was generated")
    elif not result.text.strip():
        first = result.tokens[0]
        name = tokenizer.convert_ids_to_tokens(first)
        if first in stop_ids:
            notes.append(f"the answer is empty: the model's first token was its end token ({name!r}, id {first})")
        else:
            notes.append(f"the answer has no text: {len(result.tokens)} token(s) decoded to nothing visible "
                         f"(the first: {name!r}, id {first})")
    return notes
