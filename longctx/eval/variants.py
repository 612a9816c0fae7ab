"""Variants for `longctx eval`: a method with its own options as one column, a task with its
own generator settings as one row.

    --methods "dense,apb,apb[compressor=random],apb[passing-len=0],spava[overlap=false]"
    --tasks "niah_multikey,variable_tracking[num-hops=2]"

A method variant is a method's name followed by `[option=value,...]`, options named as their
command-line flags (without `--`; `passing-len` or `passing_len`) and declared by that method
(`Method.Options`, `longctx.options`), values parsed by the declared type (`true`/`false` for a
switch); they apply on top of the options given to the whole run. A task variant takes the
settings its task declares (`longctx.eval.tasks.Task.Settings`: depth, num-hops, ...). The
spec as written is the label in the report. This is how one command compares the parts of a
method (APB's ablation) on the very same samples.
"""

from dataclasses import dataclass, field

from longctx.config import method_owner, split_specs
from longctx.errors import LongCtxError
from longctx.eval.tasks import task_named
from longctx.options import declarations


@dataclass(frozen=True)
class MethodSpec:
    """One column of an evaluation: `label` (the spec as given), the `method` name and its
    own `options` (field names -> parsed values; empty for a plain method name)."""

    label: str
    method: str
    options: dict = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class TaskSpec:
    """One row of an evaluation: `label` (the spec as given), the `task` name and the
    `settings` passed to its generator (its `Settings` fields)."""

    label: str
    task: str
    settings: dict = field(default_factory=dict, hash=False)


def _parse(text, flag, what, declared_of):
    """(name, {field: value}) of 'name' or 'name[key=value,...]'. `declared_of(name)` gives the
    {field name: Declaration} the name accepts; LongCtxError (prefixed by `flag`) naming an
    unknown key or a value its type refuses."""
    name, bracket, rest = text.partition("[")
    name = name.strip()
    if not bracket:
        return name, {}
    if not rest.endswith("]"):
        raise LongCtxError(f"{flag}: {text!r} must end with ']' ({what}[option=value,...])")
    declared = declared_of(name)
    options = {}
    for pair in split_specs(rest[:-1], flag):
        key, equals, raw = pair.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not equals or not key:
            raise LongCtxError(f"{flag}: {pair!r} in {text!r} is not option=value")
        if key not in declared:
            known = ", ".join(sorted(item.replace("_", "-") for item in declared)) or "none"
            raise LongCtxError(f"{flag}: {what} {name!r} has no option {key.replace('_', '-')!r} "
                               f"(its options: {known})")
        declaration = declared[key]
        try:
            value = declaration.parse(raw.strip())
        except LongCtxError:
            raise LongCtxError(f"{flag}: {key.replace('_', '-')}={raw.strip()!r} in {text!r} is not "
                               f"{declaration.expected}") from None
        try:
            options[key] = declaration.check(value)
        except LongCtxError as exc:
            raise LongCtxError(f"{flag}: {exc} (in {text!r})") from None
    return name, options


def _method_options(name):
    return {item.name: item for item in method_owner(name).declarations()}


def parse_spec(text):
    """A MethodSpec from 'name' or 'name[option=value,...]'; LongCtxError naming an unknown
    option of that method, or a value its type refuses."""
    return MethodSpec(text, *_parse(text, "--methods", "method", _method_options))


def _task_settings(name):
    try:
        task = task_named(name)
    except ValueError as exc:
        raise LongCtxError(str(exc).replace("choose from", "choose one of")) from None
    return {item.name: item for item in declarations(task.Settings)}


def parse_task_spec(text):
    """A TaskSpec from 'task' or 'task[setting=value,...]' (the task's `Settings`);
    LongCtxError naming an unknown task or setting."""
    name, settings = _parse(text, "--tasks", "task", _task_settings)
    _task_settings(name)
    return TaskSpec(text, name, settings)


def _specs(value, parse, what, flag):
    texts = split_specs(value, flag) if isinstance(value, str) else [str(item).strip() for item in value]
    specs = [parse(text) for text in dict.fromkeys(text for text in texts if text)]
    if not specs:
        raise LongCtxError(f"no {what} given")
    return specs


def parse_specs(value):
    """MethodSpecs of a comma-separated string or an iterable of specs, duplicates dropped;
    LongCtxError if none is given."""
    return _specs(value, parse_spec, "methods", "--methods")


def parse_task_specs(value):
    """TaskSpecs of a comma-separated string or an iterable of specs, duplicates dropped;
    LongCtxError if none is given."""
    return _specs(value, parse_task_spec, "tasks", "--tasks")
