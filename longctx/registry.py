"""Method registry: name -> implementing class, imported only when asked for.

A method is one package whose `Method` subclass declares its options (`Options`) and its
planning half (`Planner`); adding one is a line here (or naming it as a plug-in,
"package.module:ClassName", with no line at all).
"""

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
    "spava": "spava.method:SpavaAttention",
}


def method_names():
    """Registered method names, in registration order."""
    return list(METHODS)


def method_class(name):
    """The class of method `name`: a registered name, or "package.module:ClassName" naming a
    Method subclass outside longctx (a plug-in; workers import it by that path). LongCtxError
    if unknown or not importable."""
    target = METHODS.get(name) or (name if ":" in name else None)
    if target is None:
        raise LongCtxError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    module_name, class_name = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        why = (f"no module named {missing!r} on the Python path (is its folder on PYTHONPATH, or the package "
               f"installed?)" if missing and module_name.startswith(missing) else f"{type(exc).__name__}: {exc}")
        raise LongCtxError(f"cannot import method {target!r}: {why}") from None
    if not hasattr(module, class_name):
        raise LongCtxError(f"cannot import method {target!r}: module {module_name!r} has no {class_name!r}")
    return getattr(module, class_name)


def get_method(name, config):
    """Instantiate method `name` (see `method_class`) with `config` (a RunConfig)."""
    return method_class(name)(config)


def option_classes(names=()):
    """{options dataclass: [method names]} of the registered methods and of the plug-ins among
    `names` that import (a name that does not is reported where the method is made)."""
    found = {}
    for name in dict.fromkeys([*METHODS, *(name for name in names if name and ":" in name)]):
        try:
            options = method_class(name).Options
        except LongCtxError:
            continue
        if options is not None:
            found.setdefault(options, []).append(name)
    return found
