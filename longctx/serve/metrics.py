"""The server's Prometheus metrics, rendered in the text exposition format (version 0.0.4)."""

import threading

BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Histogram:
    """Cumulative bucket counts, sum and count of observed seconds."""

    def __init__(self, buckets=BUCKETS_S):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value):
        """Count one observation."""
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1
        self.sum += value
        self.count += 1

    def lines(self, name):
        """The histogram's sample lines."""
        rows = [f'{name}_bucket{{le="{bound}"}} {count}' for bound, count in zip(self.buckets, self.counts)]
        return rows + [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}",
                       f"{name}_count {self.count}"]


class Metrics:
    """What `/metrics` exports: requests by endpoint and outcome, queue depth, time to first token
    and prefill histograms, document cache hits / misses by reason / evictions, prompt tokens
    prefilled vs reused, tokens decoded, pool restarts. Thread-safe (the request thread and the handlers)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests = {}
        self.queue_depth = 0
        self.ttft = Histogram()
        self.prefill = Histogram()
        self.cache_hits = 0
        self.cache_misses = {}
        self.evictions = 0
        self.tokens = {"prefilled": 0, "reused": 0}
        self.decoded = 0
        self.restarts = 0

    def request(self, endpoint, outcome):
        """Count one finished request (`outcome`: ok, cancelled, rejected, invalid, error, ...)."""
        with self._lock:
            key = (endpoint, outcome)
            self.requests[key] = self.requests.get(key, 0) + 1

    def served(self, outcome, ttft_s, evictions):
        """Record a request the workers ran: its `longctx.serve.pool.Outcome`, the time to its
        first token seen by the server (None: none came) and the evictions it caused."""
        with self._lock:
            if ttft_s is not None:
                self.ttft.observe(ttft_s)
            if outcome.prefill_s is not None:
                self.prefill.observe(outcome.prefill_s + outcome.query_s)
            if outcome.cache == "hit":
                self.cache_hits += 1
            elif outcome.cache is not None:
                self.cache_misses[outcome.cache] = self.cache_misses.get(outcome.cache, 0) + 1
            self.evictions += evictions
            self.tokens["reused"] += outcome.cached_tokens
            self.tokens["prefilled"] += outcome.prompt_tokens - outcome.cached_tokens
            self.decoded += outcome.completion_tokens

    def restarted(self):
        """Count one restart of the worker pool."""
        with self._lock:
            self.restarts += 1

    def render(self):
        """The metrics in Prometheus text format."""
        with self._lock:
            out = ["# HELP longctx_requests_total Requests by endpoint and outcome.",
                   "# TYPE longctx_requests_total counter"]
            out += [f'longctx_requests_total{{endpoint="{endpoint}",outcome="{outcome}"}} {count}'
                    for (endpoint, outcome), count in sorted(self.requests.items())]
            out += ["# HELP longctx_queue_depth Requests waiting for the worker pool.",
                    "# TYPE longctx_queue_depth gauge", f"longctx_queue_depth {self.queue_depth}",
                    "# HELP longctx_time_to_first_token_seconds From arrival to the first answer token.",
                    "# TYPE longctx_time_to_first_token_seconds histogram",
                    *self.ttft.lines("longctx_time_to_first_token_seconds"),
                    "# HELP longctx_prefill_seconds Prefill plus query pass on the workers.",
                    "# TYPE longctx_prefill_seconds histogram", *self.prefill.lines("longctx_prefill_seconds"),
                    "# HELP longctx_cache_hits_total Requests that resumed a cached document.",
                    "# TYPE longctx_cache_hits_total counter", f"longctx_cache_hits_total {self.cache_hits}",
                    "# HELP longctx_cache_misses_total Requests that prefilled, by reason.",
                    "# TYPE longctx_cache_misses_total counter"]
            out += [f'longctx_cache_misses_total{{reason="{reason}"}} {count}'
                    for reason, count in sorted(self.cache_misses.items())]
            out += ["# HELP longctx_cache_evictions_total Cached documents evicted to stay within the budget.",
                    "# TYPE longctx_cache_evictions_total counter", f"longctx_cache_evictions_total {self.evictions}",
                    "# HELP longctx_prompt_tokens_total Prompt tokens prefilled vs reused from the cache.",
                    "# TYPE longctx_prompt_tokens_total counter"]
            out += [f'longctx_prompt_tokens_total{{kind="{kind}"}} {count}' for kind, count in self.tokens.items()]
            out += ["# HELP longctx_decoded_tokens_total Tokens the workers decoded (cancelled requests' too).",
                    "# TYPE longctx_decoded_tokens_total counter", f"longctx_decoded_tokens_total {self.decoded}"]
            out += ["# HELP longctx_pool_restarts_total Worker pools started again after a failure.",
                    "# TYPE longctx_pool_restarts_total counter", f"longctx_pool_restarts_total {self.restarts}"]
        return "\n".join(out) + "\n"
