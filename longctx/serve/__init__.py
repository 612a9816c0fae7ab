"""`longctx serve`: an OpenAI-compatible HTTP server over one worker pool (`LongContextLM`),
with the distributed document cache on (`longctx.doc_cache`).

`app` builds the FastAPI application (routes, request bodies, server-sent events), `pool` runs
requests one at a time behind a bounded queue and restarts a failed pool, `metrics` renders
Prometheus text. The server is a face like the CLI: every request takes the one request path
(`longctx.request.Session`) and never reaches into the engine.
"""
