"""Which local query rows attend to which rows of another host's K/V block, and how.

Both sides are given as span tuples from the plan (global positions in local order). The
result is a list of work items (query rows, key rows, causal) that together compute exactly
causal attention of the queries over that block; rows absent from every item see nothing of it.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class BlockItem:
    """Attend local query rows `q_rows` to block rows `k_rows`; `causal` means bottom-right causal."""

    q_rows: slice
    k_rows: slice
    causal: bool


def block_items(q_spans, k_spans):
    """Work items for causal attention of queries at `q_spans` over keys at `k_spans`.

    Contiguous spans (step 1) pair as full (keys wholly before), causal (the same span) or
    nothing (keys after). Striped spans (equal step P, positions start + i*P) pair as
    top-left causal, shifted by one when the key stripe starts after the query stripe.
    Adjacent full items over the same key rows are fused into one call.
    """
    items = []
    q_offset = 0
    for q_span in q_spans:
        k_offset = 0
        q_rows = slice(q_offset, q_offset + len(q_span))
        for k_span in k_spans:
            k_rows = slice(k_offset, k_offset + len(k_span))
            items.extend(_pair(q_span, k_span, q_rows, k_rows))
            k_offset += len(k_span)
        q_offset += len(q_span)
    return _fuse(items)


def _pair(q_span, k_span, q_rows, k_rows):
    if q_span.step != 1 or k_span.step != 1:
        if q_span.step != k_span.step:
            raise ValueError("striped spans must share one stride")
        return _striped_pair(q_span, k_span, q_rows, k_rows)
    if k_span.stop <= q_span.start:
        return [BlockItem(q_rows, k_rows, False)]
    if k_span.start >= q_span.stop:
        return []
    if (k_span.start, k_span.stop) == (q_span.start, q_span.stop):
        return [BlockItem(q_rows, k_rows, True)]
    raise ValueError(f"spans {q_span} and {k_span} overlap partially")


def _striped_pair(q_span, k_span, q_rows, k_rows):
    """Query i (position q0 + iP) sees key j (k0 + jP) iff j <= i - shift, shift = (k0 > q0)."""
    shift = 1 if k_span.start > q_span.start else 0
    n_q, n_k = len(q_span), len(k_span)
    square = min(n_k, n_q - shift)
    items = []
    if square > 0:
        q_lo = q_rows.start + shift
        items.append(BlockItem(slice(q_lo, q_lo + square), slice(k_rows.start, k_rows.start + square), True))
    if n_q - shift > n_k and n_k > 0:
        items.append(BlockItem(slice(q_rows.start + shift + n_k, q_rows.stop), k_rows, False))
    return items


def _fuse(items):
    fused = []
    for item in items:
        if fused and not item.causal and not fused[-1].causal and fused[-1].k_rows == item.k_rows \
                and fused[-1].q_rows.stop == item.q_rows.start:
            fused[-1] = BlockItem(slice(fused[-1].q_rows.start, item.q_rows.stop), item.k_rows, False)
        else:
            fused.append(item)
    return fused
