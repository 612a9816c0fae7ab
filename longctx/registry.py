"""Method registry: name -> implementing class, imported only when asked for."""

import importlib

from longctx.errors import LongCtxError

METHODS = {
    "dense": "burst.dense:DenseAttention",
    "ring": "burst.ring:RingAttention",
    "burst": "burst.ring:BurstAttention",
    "ulysses": "burst.ulysses:UlyssesAttention",
    "allgather": "burst.allgather:AllGatherAttention",
}


def method_names():
    """Registered method names, in registration order."""
    return list(METHODS)


def get_method(name, config):
    """Instantiate method `name` with `config` (a RunConfig); LongCtxError if unknown."""
    if name not in METHODS:
        raise LongCtxError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    module_name, class_name = METHODS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)(config)
