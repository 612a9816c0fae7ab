"""SPMD runner: the API for code already running on every rank of a job (torchrun).

There is no driver and no pipe: every rank constructs `SPMDLongContextLM` (joining the
process group from the torchrun environment) and calls `generate` with the same arguments.
Every rank opens the request path's `Session` (this node's devices and memory checked for its
LOCAL_WORLD_SIZE workers, the model, the method); rank 0 alone prepares each request
(`Session.prepare`: encoded once, every check `longctx generate` makes, the plan) and sends it,
or the error, to the others, so every rank runs the same ids and the same plan and bad input
fails on every rank alike with the message `generate` gives. `python -m launch.torchrun` is the
command-line entry; the Python API module re-exports this class for users.
"""

import os

from launch.worker import build_engine, init_worker, shutdown_worker
from longctx.config import RunConfig
from longctx.errors import LongCtxError
from longctx.request import Prompt, Session
from longctx.results import GenerationResult


def torchrun_env(environ=None):
    """(rank, world, local_rank, local_world) from torchrun's environment variables (RANK,
    WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE); a single process when they are unset."""
    environ = os.environ if environ is None else environ
    rank, world = int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1))
    local_rank = int(environ.get("LOCAL_RANK", rank))
    local_world = int(environ.get("LOCAL_WORLD_SIZE", world))
    return rank, world, local_rank, local_world


class SPMDLongContextLM:
    """`LongContextLM`'s surface for code running on every rank; every rank gets the same
    GenerationResult. `options` are RunConfig fields and method options, as for LongContextLM."""

    def __init__(self, model, method="burst", **options):
        rank, world, local_rank, local_world = torchrun_env()
        self.session = Session(RunConfig(model=model, method=method, nproc=world, **options), local_workers=local_world)
        self.config, self.tokenizer = self.session.worker_config, self.session.tokenizer
        self.session.method()  # checked on every rank before the process group forms
        self.comm, device = init_worker(self.config, rank, world, local_rank=local_rank, local_world=local_world)
        self.rank = rank
        self.engine = build_engine(self.config, self.comm, device)
        self.last_request = None  # the Request of the latest `generate` (its media describe the prompt)

    def generate(self, document=None, question="", max_new_tokens=32, method=None, video=None, num_frames=None,
                 fps=None, video_fps=None, max_pixels=None, max_frames=None):
        """Same contract as LongContextLM.generate; call it on every rank (only rank 0's
        arguments are read)."""
        prompt = Prompt(document, question, video, num_frames, fps, video_fps, max_pixels, max_frames)
        request = self._from_rank0(lambda: self.session.prepare(prompt, max_new_tokens, method))
        self.last_request = request
        result = self.engine.run(request)
        return GenerationResult.of(result, self.tokenizer.decode(result.tokens, skip_special_tokens=True),
                                   len(request.doc_ids), len(request.query_ids))

    def _from_rank0(self, prepare):
        """Rank 0's `prepare()` (a Request), on every rank; its LongCtxError raised on every rank
        (none waits for a request that never comes)."""
        message = None
        if self.rank == 0:
            try:
                message = ("ok", prepare())
            except LongCtxError as exc:
                message = ("error", str(exc))
        kind, payload = self.comm.broadcast_object(message, src=0)
        if kind == "error":
            raise LongCtxError(payload)
        return payload

    def close(self):
        """Leave the process group."""
        shutdown_worker()
