"""A launcher outside longctx (`--launcher plugins.threads:ThreadLauncher`): the workers are
threads of the driver process meeting at a barrier (`helpers.ThreadComm`). It registers like a
method: a class with `name`, `runs_here`, `Options` (its `--barrier-timeout` flag) and the
`longctx.launcher.Launcher` methods, named by its path with no edit inside longctx."""

import copy
import queue
import threading
from dataclasses import dataclass

import torch

from helpers import ThreadComm, start_workers
from launch.replies import run_to_end
from longctx.engine import Engine
from longctx.models import load_model, resolve_dtype
from longctx.options import option


@dataclass(frozen=True)
class ThreadOptions:
    """The thread launcher's option."""

    barrier_timeout: float = option(60.0, "threads launcher: seconds a worker thread waits at a collective",
                                    minimum=1)


class ThreadLauncher:
    """`config.nproc` engine workers as threads of this process (CPU), each with its own copy of
    the model."""

    name = "threads"
    runs_here = True
    Options = ThreadOptions

    @classmethod
    def worker_config(cls, config):
        """The workers run here, on the CPU."""
        return config.replace(device="cpu")

    def __init__(self, config):
        self.world = config.nproc
        timeout = config.options_for(ThreadLauncher).barrier_timeout
        device = torch.device("cpu")
        model = load_model(config.model, device, resolve_dtype(config.dtype, device), config.family,
                           config.rope_scaling)
        self._hub = {"world": self.world, "barrier": threading.Barrier(self.world, timeout=timeout),
                     "slots": [None] * self.world}
        self._engines = [Engine(copy.deepcopy(model), ThreadComm(rank, self._hub), config, device)
                         for rank in range(self.world)]

    def run(self, request):
        """Rank 0's EngineResult of `request`."""
        return run_to_end(self.stream(request))

    def stream(self, request):
        """Yield rank 0's tokens as they are decided; return its EngineResult."""
        tokens = queue.Queue()
        finish = start_workers(self._engines, self._hub, request, on_token=tokens.put, on_done=lambda: tokens.put(None))
        yield from iter(tokens.get, None)
        return finish()

    def abort(self):
        """Nothing runs between requests."""
        self._engines = []

    def close(self):
        """As `abort`."""
        self.abort()
