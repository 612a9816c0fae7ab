"""Method registry: name -> implementing class, imported only when asked for."""

import importlib

from longctx.errors import LongCtxError

METHODS = {
    "dense": "burst.dense:DenseAttention",
    "ring": "burst.ring:RingAttention",
    "burst": "burst.ring:BurstAttention",
    "ulysses": "burst.ulysses:UlyssesAttention",
    "allgather": "burst.allgather:AllGatherAttention",
    "apb": "apb.method:APBAttention",
    "star": "apb.star:StarAttention",
}


def method_names():
    """Registered method names, in registration order."""
    return list(METHODS)


def get_method(name, config):
    """Instantiate method `name` with `config` (a RunConfig).

    `name` is a registered name, or "package.module:ClassName" naming a Method subclass
    outside longctx (a plug-in; workers import it by that path). LongCtxError if unknown.
    """
    target = METHODS.get(name) or (name if ":" in name else None)
    if target is None:
        raise LongCtxError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    module_name, class_name = target.split(":", 1)
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise LongCtxError(f"cannot import method {target!r}") from None
    return cls(config)
