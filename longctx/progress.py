"""A request's progress on stderr: workers starting, then the prefill layer by layer with its
token rate. One tqdm line, shown only on a terminal and never with --quiet (`shown`).

Two halves, so every entry can use them (the CLI's `generate`, a server's request log):

* `layer_hooks(decoder, on_layer)` is the engine's per-layer hook: while it is open,
  `on_layer(done, total)` is called after each decoder layer's forward of the prefill (on the
  worker; the local launcher forwards rank 0's calls to the driver).
* `PrefillProgress` is the driver's display: `starting(workers)` while the pool starts,
  `layer(done, total)` for each layer reported, `close()` before the answer is printed.
"""

import contextlib
import sys
import time


def shown(quiet=False, stream=None):
    """True when progress should be drawn: not `quiet` and `stream` (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    return not quiet and hasattr(stream, "isatty") and stream.isatty()


@contextlib.contextmanager
def layer_hooks(decoder, on_layer):
    """While open, call `on_layer(done, total)` after each layer of `decoder.layers` (the
    transformers decoder stack the prefill runs) finishes its forward. Does nothing when
    `on_layer` is None or the decoder has no `layers` list."""
    layers = getattr(decoder, "layers", None)
    if on_layer is None or not layers:
        yield
        return
    total = len(layers)
    handles = [layer.register_forward_hook(lambda *_, done=index + 1: on_layer(done, total))
               for index, layer in enumerate(layers)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class PrefillProgress:
    """One progress line for one request: "starting 4 workers" (with the seconds it takes), then
    "prefill 4,096 tokens: layer 12/32, 8,000 tok/s". `enabled` False draws nothing (every
    method is then a no-op); `stream` defaults to stderr."""

    def __init__(self, doc_tokens, enabled=True, stream=None):
        self.doc_tokens, self.enabled = doc_tokens, enabled
        self.stream = sys.stderr if stream is None else stream
        self._bar, self._started = None, None

    def _open(self, total, description, unit):
        from tqdm import tqdm

        self.close()
        self._bar = tqdm(total=total, desc=description, unit=unit, file=self.stream, leave=False,
                         dynamic_ncols=True, bar_format="{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}]{postfix}")

    def starting(self, workers):
        """The worker pool is starting (`workers` processes or actors)."""
        if self.enabled:
            self._open(None, f"starting {workers} worker{'s' if workers != 1 else ''}", "")

    def layer(self, done, total):
        """Layer `done` of `total` finished its prefill forward (on rank 0)."""
        if not self.enabled:
            return
        if self._started is None or self._bar is None or self._bar.total != total:
            self._open(total, f"prefill {self.doc_tokens:,} tokens", "layers")
            self._started = time.perf_counter()
        self._bar.n = done
        rate = self.doc_tokens * done / total / max(time.perf_counter() - self._started, 1e-9)
        self._bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
        self._bar.refresh()

    def close(self):
        """Remove the line (before the answer is printed)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
