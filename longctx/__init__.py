"""longctx: fast long-context prefill by spreading one long sequence over many workers."""

__version__ = "0.1.0"
