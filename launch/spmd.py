"""SPMD runner: the API for code already running on every rank of a job (torchrun).

There is no driver and no pipe: every rank constructs `SPMDLongContextLM` (joining the
process group from the torchrun environment) and calls `generate` with the same arguments.
Rank 0 encodes the prompt and sends the token ids to the others, so every rank runs the same
ids and no rank but 0 tokenises; the request is validated once, by the engine on every rank
(before any collective, so bad input fails on every rank alike). `python -m launch.torchrun`
is the command-line entry; the Python API module re-exports this class for users.
"""

import os

from launch.worker import build_engine, init_worker, shutdown_worker
from longctx.config import RunConfig
from longctx.engine import Request
from longctx.errors import LongCtxError
from longctx.models import check_model_dir, load_tokenizer
from longctx.request import GenerationResult, check_lengths, check_machine, encode_prompt, stop_ids


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
    GenerationResult. `options` are RunConfig fields, as for LongContextLM."""

    def __init__(self, model, method="burst", **options):
        rank, world, local_rank, local_world = torchrun_env()
        self.config = RunConfig(model=model, method=method, nproc=world, **options).validate()
        check_machine(self.config)
        self.model_config = check_model_dir(model)
        self.tokenizer = load_tokenizer(model)
        self._stop = stop_ids(self.tokenizer, self.model_config)
        self.comm, device = init_worker(self.config, rank, world, local_rank=local_rank, local_world=local_world)
        self.rank = rank
        self.engine = build_engine(self.config, self.comm, device)

    def generate(self, document, question, max_new_tokens=32, method=None):
        """Same contract as LongContextLM.generate; call it on every rank (only rank 0's
        document and question are encoded)."""
        doc_ids, query_ids = self._ids_from_rank0(document, question)
        check_lengths(self.model_config, len(doc_ids), len(query_ids), max_new_tokens)
        raw = self.engine.run(Request(doc_ids, query_ids, max_new_tokens, method, False, self._stop))
        return GenerationResult.from_raw(raw, self.tokenizer, len(doc_ids), len(query_ids))

    def _ids_from_rank0(self, document, question):
        message = None
        if self.rank == 0:
            try:
                message = ("ok", encode_prompt(self.tokenizer, document, question))
            except LongCtxError as exc:  # every rank raises it, none waits for ids that never come
                message = ("error", str(exc))
        kind, payload = self.comm.broadcast_object(message, src=0)
        if kind == "error":
            raise LongCtxError(payload)
        return payload

    def close(self):
        """Leave the process group."""
        shutdown_worker()
