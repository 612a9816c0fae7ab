"""Registries: name -> implementing class, imported only when asked for.

Methods, launchers and model families register the same way: one line here (a name and the
"package.module:ClassName" that implements it), or no line at all for a plug-in named by that
path (`--method plugins.uneven:UnevenRing`, `--launcher mypkg.slurm:SlurmLauncher`,
`--family plugins.chat:ChatFamily`). Nothing is imported until it is asked for, so the core
imports no method package, no launcher and no family module. A method or a launcher declares
its own options (`Options`, see `longctx.options`); a method brings its planning half
(`Planner`).
"""

import importlib
import os

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

LAUNCHERS = {
    "local": "launch.local:LocalLauncher",
    "ray": "launch.ray:RayLauncher",
}

# Model families with an adapter of their own (`longctx.models.family`); every other decoder-only
# causal LM of transformers is served by the default text adapter.
FAMILIES = {
    "qwen2_5_vl": "longctx.families.qwen2_5_vl:Qwen25VLFamily",
}


def load(kind, name, table):
    """The class registered as `name` in `table` (a "package.module:ClassName" string), or named
    by such a path outside longctx (a plug-in; workers import it by that path). `kind` names the
    registry in errors ("method", "launcher", ...). LongCtxError if unknown or not importable."""
    target = table.get(name) or (name if ":" in name else None)
    if target is None:
        raise LongCtxError(f"unknown {kind} {name!r}; choose one of {', '.join(table)}")
    module_name, class_name = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        why = (_not_on_path(missing) if missing and module_name.startswith(missing)
               else f"{type(exc).__name__}: {exc}")
        raise LongCtxError(f"cannot import {kind} {target!r}: {why}") from None
    if not hasattr(module, class_name):
        raise LongCtxError(f"cannot import {kind} {target!r}: module {module_name!r} has no {class_name!r}")
    return getattr(module, class_name)


def _not_on_path(missing):
    """Why module `missing` (a prefix of the module asked for) did not import, and what to do."""
    top = missing.split(".")[0]
    if os.path.isdir(top) or os.path.isfile(top + ".py"):
        return (f"no module named {missing!r} on the Python path; {top!r} is here in {os.getcwd()!r}, but the "
                "`longctx` command does not look in the current directory: run it as `PYTHONPATH=. longctx ...` "
                "(or install the package)")
    return f"no module named {missing!r} on the Python path (is its folder on PYTHONPATH, or the package installed?)"


def method_names():
    """Registered method names, in registration order."""
    return list(METHODS)


def method_class(name):
    """The `longctx.method.Method` subclass of method `name` (registered, or a plug-in path). A
    plug-in that does not set a `name` of its own is named by its path (not by the method it
    extends), so results, plans and errors say which method ran."""
    cls = load("method", name, METHODS)
    if name not in METHODS and "name" not in vars(cls):
        cls.name = name
    return cls


def get_method(name, config):
    """Instantiate method `name` (see `method_class`) with `config` (a RunConfig)."""
    return method_class(name)(config)


def launcher_names():
    """Registered launcher names, in registration order."""
    return list(LAUNCHERS)


def launcher_class(name):
    """The class of launcher `name` (registered, or a plug-in path); it satisfies
    `longctx.launcher.Launcher`."""
    return load("launcher", name, LAUNCHERS)


def family_names():
    """Model families with an adapter of their own, in registration order."""
    return list(FAMILIES)


def family_class(name):
    """The `longctx.models.family.ModelFamily` subclass registered as `name` (or a plug-in path)."""
    return load("model family", name, FAMILIES)
