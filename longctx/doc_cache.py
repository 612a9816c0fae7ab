"""The distributed document cache: every worker keeps its shard of a document's K/V after a
request, and a later request that starts with the same tokens runs only the query pass.

Why it is exact: the exact methods (dense, ring/burst, all-gather, Ulysses) and Star's context
phase compute a document's K/V without looking at the question, and the query pass
(`Method.decode_attention`) already attends to every worker's cache and merges exactly. A
request whose tokens start with a cached sequence therefore continues from the cached shards:
the rest of its tokens (the rest of the context, then the question) run as the query pass at
their true positions, appended by the plan's `append_rank`. Afterwards the appended K/V is
rolled back to what should stay: the request's context (a chat's earlier turns), so a
conversation keeps extending its entry; the question and the answer never stay.

Who does what. The driver (`DocumentIndex`, one per worker pool, in `LongContextLM`) keeps the
index: for each entry its token sequence, how many of them were prefilled over the workers
(`base_len`: the rest live on `append_rank` only), the plan, and the bytes each worker holds.
It decides hit or miss, which entries to evict (least recently used, never the one in use, under
a per-worker byte budget) and what to keep, and sends that to the workers as a `CacheStep` in
the Request. The workers (`WorkerDocuments`, one per Engine) hold the shards by entry id and
do as told.

A method whose document K/V depends on the question (`Method.kv_depends_on_question`: APB puts
the question in its anchor, Spava into its passing selection) hits only on the same document
and question, and every miss carries its reason (`MISS_REASONS`).
"""

import hashlib
import itertools
import pickle
import time
from dataclasses import dataclass, field

GIB = 1024 ** 3

HIT = "hit"
MISS_REASONS = {
    "new": "no cached document starts this request",
    "shorter": "the request shares only part of a cached prefill (the workers hold tokens past it)",
    "question": "the method's document K/V depends on the question: cached only for the same document and question",
    "evicted": "its document was cached and evicted to stay within the cache budget",
    "too_large": "the document's K/V is larger than the per-worker cache budget",
    "uncached": "this request is not cached (hidden states requested)",
}


@dataclass(frozen=True)
class CacheStep:
    """What the workers do with the document cache for one request (made by `DocumentIndex`).

    `evict`: entry ids to drop first. `entry`: the id the request resumes from (`hit_len` > 0)
    and/or keeps its K/V under. `hit_len`: tokens of the request (document then question) that
    the entry already holds; the rest runs as the query pass. `keep_len`: tokens of the
    request to keep afterwards (0: keep nothing; the entry is dropped if it was resumed).
    """

    entry: int
    hit_len: int = 0
    keep_len: int = 0
    evict: tuple = ()


@dataclass
class Entry:
    """The driver's record of one cached document: `tokens` (the cached sequence), `base_len`
    (how many of them were prefilled over the workers; later ones were appended by
    `plan.append_rank`), the prefill's `plan`, `scope` (what besides the tokens decides the
    K/V: `DocumentIndex.scope`), `question` (the question's ids for a question-dependent
    method, else None) and `busy` while a request uses it."""

    id: int
    scope: tuple
    tokens: tuple
    base_len: int
    plan: object
    question: tuple = None
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False

    def worker_bytes(self, row_bytes, length=None):
        """Bytes of K/V the busiest worker holds for this entry kept at `length` tokens (default
        its own): its owned share, plus the appended tokens on `append_rank`."""
        length = len(self.tokens) if length is None else length
        extra = length - self.base_len
        return row_bytes * max(host.num_tokens + (extra if host.rank == self.plan.append_rank else 0)
                               for host in self.plan.hosts)


def token_hash(ids):
    """A short hex digest of a token id sequence (what logs and metrics show of a key)."""
    return hashlib.sha256(pickle.dumps(tuple(ids), protocol=4)).hexdigest()[:16]


def common_prefix(first, second):
    """How many leading items `first` and `second` share."""
    limit = min(len(first), len(second))
    if tuple(first[:limit]) == tuple(second[:limit]):
        return limit
    low, high = 0, limit  # the answer is in [low, high): first[:low] == second[:low], first[:high] != second[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if tuple(first[low:middle]) == tuple(second[low:middle]):
            low = middle
        else:
            high = middle
    return low


@dataclass
class Lookup:
    """The driver's decision for one request: the `step` sent to the workers, the `entry`
    (None when nothing is kept or resumed), `cached_tokens` reused, and `reason` (HIT or a
    key of MISS_REASONS)."""

    step: CacheStep
    entry: Entry
    cached_tokens: int
    reason: str


class DocumentIndex:
    """The driver's index of the document cache of one worker pool.

    `budget_bytes` is the per-worker budget of cached K/V; `row_bytes` the K/V bytes of one
    token on one worker over all layers (2 x layers x KV heads x head dim x dtype bytes).
    `counters` counts hits, misses by reason, evictions, and tokens prefilled vs reused
    (what `/metrics` exports).
    """

    def __init__(self, budget_bytes, row_bytes):
        self.budget_bytes, self.row_bytes = int(budget_bytes), int(row_bytes)
        self.entries = {}
        self._ids = itertools.count(1)
        self._evicted = set()
        self.counters = {"hits": 0, "misses": {reason: 0 for reason in MISS_REASONS}, "evictions": 0,
                         "tokens_reused": 0, "tokens_prefilled": 0}

    @staticmethod
    def scope(model, method, options, world, layout, dtype):
        """What besides the token ids decides a document's K/V: the model, the method and its
        options, the worker count, the layout and the dtype."""
        return (str(model), method, repr(options), world, layout, dtype)

    @staticmethod
    def media_key(media):
        """What of a request's extra input (a video) joins its scope: a digest of its pickle."""
        return hashlib.sha256(pickle.dumps(media, protocol=4)).hexdigest()[:16]

    def used_bytes(self):
        """Bytes the busiest worker holds for every entry (an upper bound: each entry's
        busiest worker)."""
        return sum(entry.worker_bytes(self.row_bytes) for entry in self.entries.values())

    def lookup(self, scope, doc_ids, query_ids, plan, question_dependent, cacheable=True):
        """The Lookup of a request (document `doc_ids`, question `query_ids`, fresh `plan`) in
        `scope`; marks the entry it uses busy until `finish`."""
        sequence = tuple(doc_ids) + tuple(query_ids)
        if not cacheable:
            return self._miss("uncached", None)
        if question_dependent:
            same_document = [entry for entry in self.entries.values()
                             if entry.scope == scope and entry.tokens == tuple(doc_ids)]
            match = next((entry for entry in same_document if entry.question == tuple(query_ids)), None)
            if match is not None:
                return self._hit(match, len(doc_ids), len(doc_ids))
            reason = "question" if same_document else self._new_reason(scope, doc_ids)
            return self._admit(scope, doc_ids, plan, tuple(query_ids), reason)
        best, best_len = None, 0
        for entry in self.entries.values():
            if entry.scope != scope:
                continue
            shared = common_prefix(entry.tokens, sequence)
            usable = min(shared, len(sequence) - 1)
            if shared >= entry.base_len and usable > best_len:
                best, best_len = entry, usable
        if best is not None:
            return self._hit(best, best_len, max(len(doc_ids), best_len))
        shorter = any(entry.scope == scope and common_prefix(entry.tokens, sequence) > 0
                      for entry in self.entries.values())
        return self._admit(scope, doc_ids, plan, None, "shorter" if shorter else self._new_reason(scope, doc_ids))

    def _new_reason(self, scope, doc_ids):
        return "evicted" if (scope, token_hash(doc_ids)) in self._evicted else "new"

    def _miss(self, reason, entry, step=None):
        self.counters["misses"][reason] += 1
        return Lookup(step or CacheStep(0), entry, 0, reason)

    def _hit(self, entry, hit_len, keep_len):
        """Resume `entry` at `hit_len` tokens and keep `keep_len` of the request afterwards (the
        entry grows: older entries are evicted to make room; when they cannot, it keeps `hit_len`)."""
        self.counters["hits"] += 1
        self.counters["tokens_reused"] += hit_len
        entry.busy, entry.last_used = True, time.monotonic()
        evict = self._make_room(entry.worker_bytes(self.row_bytes, keep_len) - entry.worker_bytes(self.row_bytes))
        if evict is None:
            keep_len = hit_len
            evict = ()
        return Lookup(CacheStep(entry.id, hit_len, keep_len, evict), entry, hit_len, HIT)

    def _admit(self, scope, doc_ids, plan, question, reason):
        """A miss: prefill, and keep the document as a new entry if it fits."""
        entry = Entry(next(self._ids), scope, tuple(doc_ids), len(doc_ids), plan, question, busy=True)
        if entry.worker_bytes(self.row_bytes) > self.budget_bytes and reason in ("new", "evicted"):
            reason = "too_large"
        evict = self._make_room(entry.worker_bytes(self.row_bytes))
        if evict is None:
            return self._miss(reason, None)
        return self._miss(reason, entry, CacheStep(entry.id, 0, len(doc_ids), evict))

    def _make_room(self, needed):
        """Entry ids to evict (least recently used first, never a busy one) so that `needed`
        more bytes fit the budget; None when they cannot."""
        free = self.budget_bytes - self.used_bytes()
        if needed <= free:
            return ()
        victims = []
        for entry in sorted(self.entries.values(), key=lambda item: item.last_used):
            if entry.busy:
                continue
            victims.append(entry)
            free += entry.worker_bytes(self.row_bytes)
            if needed <= free:
                return tuple(victim.id for victim in victims)
        return None

    def finish(self, lookup, doc_ids, query_ids, ok):
        """Record what the workers did for `lookup`'s request: on success the evictions took
        place and the entry holds its kept tokens; `ok` False (the pool failed) forgets
        everything (`clear`)."""
        if not ok:
            self.clear()
            return
        step, entry = lookup.step, lookup.entry
        for victim in step.evict:
            gone = self.entries.pop(victim)
            self._evicted.add((gone.scope, token_hash(gone.tokens[:gone.base_len])))
            self.counters["evictions"] += 1
        sequence = tuple(doc_ids) + tuple(query_ids)
        self.counters["tokens_prefilled"] += len(sequence) - lookup.cached_tokens
        if entry is None:
            return
        entry.busy, entry.last_used = False, time.monotonic()
        if step.keep_len:
            entry.tokens = sequence[: step.keep_len]
            self.entries[entry.id] = entry
            self._evicted.discard((entry.scope, token_hash(entry.tokens[:entry.base_len])))
        else:
            self.entries.pop(entry.id, None)

    def clear(self):
        """Forget every entry (the workers that held them are gone)."""
        self.entries.clear()


class WorkerDocuments:
    """One worker's shards of the cached documents: entry id -> the WorkerContext its prefill
    left (its KV cache holds this worker's shard, `ctx.inputs` the family's per-request input
    state). The Engine calls `evict`, `resume` and `keep` as the request's CacheStep says."""

    def __init__(self):
        self.contexts = {}

    def evict(self, ids):
        """Drop the entries `ids` (already gone ones are ignored)."""
        for entry in ids:
            self.contexts.pop(entry, None)

    def resume(self, entry, hit_len):
        """The cached context of `entry` cut back to its first `hit_len` tokens (the appended
        tokens past them are dropped on `append_rank`); LookupError when this worker lacks it."""
        if entry not in self.contexts:
            raise LookupError(f"cache entry {entry} is not on this worker")
        ctx = self.contexts.pop(entry)
        _cut(ctx, hit_len)
        return ctx

    def keep(self, entry, ctx, keep_len):
        """Keep `ctx` (after its request) as `entry`, its appended K/V cut back to `keep_len`
        tokens of the request; `keep_len` 0 keeps nothing."""
        self.contexts.pop(entry, None)
        if keep_len:
            _cut(ctx, keep_len)
            self.contexts[entry] = ctx


def _cut(ctx, length):
    """Cut `ctx`'s cache back to the first `length` tokens of its sequence: every worker keeps
    its owned share of the prefill, `append_rank` also the tokens appended up to `length`."""
    host = ctx.plan.hosts[ctx.rank]
    extra = length - ctx.plan.doc_len if ctx.rank == ctx.plan.append_rank else 0
    if extra < 0:
        raise ValueError(f"cannot cut a cached prefill of {ctx.plan.doc_len} tokens back to {length}")
    ctx.cache.truncate(host.num_tokens + extra)
