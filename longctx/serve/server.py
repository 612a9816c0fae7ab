"""Running `longctx serve`: open the session (every check once), start the workers, serve HTTP
with uvicorn until SIGTERM or Ctrl-C, then stop the workers (a request in flight finishes within
the grace period or is cancelled) so that no process is left."""

import json
import logging
import os
from contextlib import asynccontextmanager

from longctx.doc_cache import GIB
from longctx.errors import LongCtxError
from longctx.memory import default_cache_bytes
from longctx.costs import resolve_device_type
from longctx.request import Session
from longctx.sampling import Sampling
from longctx.serve.app import Settings, create_app
from longctx.serve.metrics import Metrics
from longctx.serve.pool import Pool

GRACE_S = 30  # how long SIGTERM waits for requests in flight before cancelling them


def model_sampling(model_dir):
    """The model's default sampling from its generation_config.json: greedy unless it sets
    do_sample (then its temperature and top_p)."""
    path = os.path.join(model_dir, "generation_config.json")
    try:
        with open(path) as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return Sampling()
    if not config.get("do_sample"):
        return Sampling()
    return Sampling(float(config.get("temperature", 1.0)), float(config.get("top_p", 1.0)))


def cache_gib_for(session, cache_gib):
    """The per-worker cache budget in GiB: `cache_gib` as given, else `longctx.memory`'s share
    of what each worker has left after its weights."""
    if cache_gib is not None:
        if cache_gib < 0:
            raise LongCtxError(f"--cache-gib must be >= 0 (got {cache_gib})")
        return cache_gib
    shape = session.method().planner.cost_model().shape
    device = resolve_device_type(session.worker_config.device)
    return default_cache_bytes(shape, session.model_config.vocab_size, device,
                               max(1, session.local_workers)) / GIB


def build(config, *, api_key=None, cache_gib=None, max_queue=16, max_tokens=64, max_body_mb=64,
          served_name=None):
    """(FastAPI app, Pool) for `config` (a RunConfig), checked once; the workers start with the
    app's lifespan."""
    session = Session(config)
    metrics = Metrics()
    pool = Pool(session, cache_gib_for(session, cache_gib), max_queue, metrics)
    settings = Settings(name=served_name or os.path.basename(os.path.normpath(config.model)), api_key=api_key,
                        max_body_bytes=int(max_body_mb * 1024 * 1024), max_tokens=max_tokens,
                        sampling=model_sampling(config.model))

    @asynccontextmanager
    async def lifespan(app):
        import asyncio

        await asyncio.to_thread(pool.start)
        logging.getLogger("longctx.serve").info("serving %s with %s on %d workers (cache %.2f GiB per worker)",
                                                settings.name, config.method, config.nproc, pool.cache_gib)
        try:
            yield
        finally:
            await asyncio.to_thread(pool.close)

    return create_app(pool, metrics, settings, lifespan), pool


def serve(config, host="127.0.0.1", port=8000, **options):
    """Serve until SIGTERM / Ctrl-C (uvicorn's handlers); `options` as `build`."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="longctx serve: %(message)s")
    app, _ = build(config, **options)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=GRACE_S)
