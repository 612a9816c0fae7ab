"""The baseline every longctx speed-up is measured against: Hugging Face's own SDPA forward.

One process, the unmodified model loaded with `attn_implementation="sdpa"`, one forward over
document + question tokens (`use_cache=False`, `logits_to_keep=1`, under
`torch.inference_mode()`), with every CPU thread of the machine:

    with HFSDPABaseline("examples/models/needle-llama") as hf:
        timing = hf.time(doc_ids, query_ids, repeats=3)
    print(timing.median_s, timing.argmax)

That forward yields the logits of the first answer token. A longctx method needs its prefill
plus its query pass for the same logits, so a fair speed-up is
`hf_seconds / (prefill_s + query_s)` ("time to first token logits"; `speedup`). Measure it
while no worker pool is alive, or the workers compete for the cores.
"""

import gc
import os
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from longctx.errors import LongCtxError
from longctx.models import model_family, resolve_device, resolve_dtype
from longctx.models.family import family_for
from longctx.models.loading import quiet_libraries

NAME = "HF SDPA"


@dataclass
class BaselineTiming:
    """One `HFSDPABaseline.time` call: seconds of each timed forward, their median, and what ran.

    `argmax` is the greedy token of the last position, i.e. the first answer token, which
    longctx dense must agree with.
    """

    seconds: list
    median_s: float
    threads: int
    device: str
    dtype: str
    tokens: int
    argmax: int

    def to_dict(self):
        """JSON-ready dict."""
        return asdict(self)


class HFSDPABaseline:
    """The model at `model_dir` loaded once with Hugging Face's SDPA attention, reusable for
    many token lists. `device` / `dtype` follow `longctx.models.loading` ("auto": bfloat16 on
    CUDA, float32 on CPU). A bad model directory raises one-line LongCtxError. Use as a
    context manager or call `close()` to free the weights. `rope_scaling` (a rope dict,
    `longctx.models.positions`) is applied to the config as the workers apply it."""

    def __init__(self, model_dir, device="auto", dtype="auto", rope_scaling=None):

        family, config = model_family(model_dir, rope_scaling=rope_scaling)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        quiet_libraries()
        try:
            model = family.model_class().from_pretrained(model_dir, config=config, dtype=self.dtype,
                                                         attn_implementation="sdpa", local_files_only=True)
        except (ValueError, OSError, KeyError, RuntimeError) as exc:
            lines = str(exc).strip().splitlines()
            raise LongCtxError(f"cannot load the model in {model_dir!r} with HF SDPA: "
                               f"{lines[0] if lines else type(exc).__name__}") from None
        self.model = model.to(self.device).eval()
        self._warm = False

    @classmethod
    def of_model(cls, model):
        """A baseline over an already loaded Hugging Face model (e.g. one longctx loaded, so both
        run the very same weights): its attention is switched to SDPA for each timed call and
        switched back after. Its device and dtype are the model's; `close()` leaves it alone."""
        baseline = cls.__new__(cls)
        parameter = next(model.parameters())
        baseline.model, baseline.device, baseline.dtype = model, parameter.device, parameter.dtype
        baseline._warm = False
        return baseline

    def time(self, doc_ids, query_ids, repeats=1, warmup=None, media=None):
        """Time `repeats` (>= 1) forwards of `doc_ids + query_ids` (with the family's `media`, a
        video: its encoder runs inside the timed forward); returns a BaselineTiming.

        One untimed forward first when `warmup` is True, or by default (None) on this
        object's first call only. Every forward runs with `os.cpu_count()` torch threads (the
        caller's setting is restored after) and is CUDA-synchronised on a GPU.
        """
        if repeats < 1:
            raise LongCtxError(f"baseline repeats must be at least 1 (got {repeats})")
        ids = list(doc_ids) + list(query_ids)
        if not ids:
            raise LongCtxError("the baseline got no tokens")
        input_ids = torch.tensor([ids], device=self.device)
        extra = {} if media is None else family_for(self.model.config).hf_inputs(self.model, input_ids, media)
        threads = os.cpu_count() or 1
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            if warmup or (warmup is None and not self._warm):
                self._forward(input_ids, extra)
                self._warm = True
            seconds = []
            for _ in range(repeats):
                self._sync()
                start = time.perf_counter()
                logits = self._forward(input_ids, extra)
                self._sync()
                seconds.append(time.perf_counter() - start)
        finally:
            torch.set_num_threads(saved)
        return BaselineTiming(seconds=seconds, median_s=statistics.median(seconds), threads=threads,
                              device=str(self.device), dtype=str(self.dtype).removeprefix("torch."),
                              tokens=len(ids), argmax=int(logits[0, -1].argmax()))

    def _forward(self, input_ids, extra):
        previous = self.model.config._attn_implementation
        if previous != "sdpa":
            self.model.set_attn_implementation("sdpa")
        try:
            with torch.inference_mode():
                return self.model(input_ids=input_ids, use_cache=False, logits_to_keep=1, **extra).logits
        finally:
            if previous != "sdpa":
                self.model.set_attn_implementation(previous)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self):
        """Drop the weights (and the CUDA cache they used)."""
        self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def speedup(hf_s, method_s):
    """How many times faster than HF SDPA: `hf_s / method_s` (None if either is missing)."""
    if hf_s is None or method_s is None:
        return None
    return hf_s / max(method_s, 1e-9)


def describe_speedup(ratio):
    """'1.60x faster than HF SDPA' or '1.25x slower than HF SDPA' for a `speedup` ratio."""
    if ratio >= 1:
        return f"{ratio:.2f}x faster than {NAME}"
    return f"{1 / max(ratio, 1e-9):.2f}x slower than {NAME}"
