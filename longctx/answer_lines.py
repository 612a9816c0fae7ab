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
