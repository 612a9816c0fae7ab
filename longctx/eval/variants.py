"""Variants for `longctx eval`: a method with its own options as one column, a task with its
own generator settings as one row.

    --methods "dense,apb,apb[compressor=random],apb[passing-len=0],star,burst"
    --tasks "niah_multikey,variable_tracking[num-hops=2]"

A method variant is a registered method's name followed by `[option=value,...]`, options named
as their command-line flags (without `--`; `passing-len` or `passing_len`), their values parsed
by the type the method's `Options` dataclass declares; they apply on top of the options given to
the whole run. A task variant takes the keywords of `longctx.eval.tasks.make_sample` (depth,
num-distractors, num-values, num-queries, num-hops, num-chains). The spec as written is the
label in the report. This is how one command compares the parts of a method (APB's ablation)
on the very same samples.
"""

import inspect
from dataclasses import dataclass, field, fields

from longctx.errors import LongCtxError
from longctx.eval.tasks import TASKS, make_sample
from longctx.registry import method_class


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
    `settings` passed to its generator (`make_sample` keywords)."""

    label: str
    task: str
    settings: dict = field(default_factory=dict, hash=False)


def split_specs(value):
    """The comma-separated specs of `value`, commas inside [...] kept: 'a,b[x=1,y=2]' ->
    ['a', 'b[x=1,y=2]']. LongCtxError on unbalanced brackets."""
    specs, depth, current = [], 0, ""
    for char in value:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            raise LongCtxError(f"--methods: unbalanced brackets in {value!r}")
        if char == "," and depth == 0:
            specs.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise LongCtxError(f"--methods: unbalanced brackets in {value!r}")
    return [spec.strip() for spec in [*specs, current] if spec.strip()]


def _parse(text, flag, what, declared_of):
    """(name, {field: value}) of 'name' or 'name[key=value,...]'. `declared_of(name)` gives the
    {field name: type} the name accepts; LongCtxError (prefixed by `flag`) naming an unknown key
    or a value its type refuses."""
    name, bracket, rest = text.partition("[")
    name = name.strip()
    if not bracket:
        return name, {}
    if not rest.endswith("]"):
        raise LongCtxError(f"{flag}: {text!r} must end with ']' ({what}[option=value,...])")
    declared = declared_of(name)
    options = {}
    for pair in split_specs(rest[:-1]):
        key, equals, raw = pair.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not equals or not key:
            raise LongCtxError(f"{flag}: {pair!r} in {text!r} is not option=value")
        if key not in declared:
            known = ", ".join(sorted(item.replace("_", "-") for item in declared)) or "none"
            raise LongCtxError(f"{flag}: {what} {name!r} has no option {key.replace('_', '-')!r} "
                               f"(its options: {known})")
        kind = declared[key]
        try:
            options[key] = kind(raw.strip())
        except ValueError:
            raise LongCtxError(f"{flag}: {key.replace('_', '-')}={raw.strip()!r} in {text!r} is not "
                               f"a valid {kind.__name__}") from None
    return name, options


def _method_options(name):
    options_class = method_class(name).Options
    return {item.name: item.type for item in fields(options_class)} if options_class else {}


def parse_spec(text):
    """A MethodSpec from 'name' or 'name[option=value,...]'; LongCtxError naming an unknown
    option of that method, or a value its type refuses."""
    return MethodSpec(text, *_parse(text, "--methods", "method", _method_options))


# make_sample's generator settings a task variant may set, with their types
TASK_SETTINGS = {name: float if name == "depth" else type(parameter.default)
                 for name, parameter in inspect.signature(make_sample).parameters.items()
                 if name in ("depth", "num_distractors", "num_values", "num_queries", "num_hops", "num_chains")}


def _task_settings(name):
    if name not in TASKS:
        raise LongCtxError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASK_SETTINGS


def parse_task_spec(text):
    """A TaskSpec from 'task' or 'task[setting=value,...]' (`TASK_SETTINGS`);
    LongCtxError naming an unknown task or setting."""
    name, options = _parse(text, "--tasks", "task", _task_settings)
    _task_settings(name)
    return TaskSpec(text, name, options)


def _specs(value, parse, what):
    texts = split_specs(value) if isinstance(value, str) else [str(item).strip() for item in value]
    specs = [parse(text) for text in dict.fromkeys(text for text in texts if text)]
    if not specs:
        raise LongCtxError(f"no {what} given")
    return specs


def parse_specs(value):
    """MethodSpecs of a comma-separated string or an iterable of specs, duplicates dropped;
    LongCtxError if none is given."""
    return _specs(value, parse_spec, "methods")


def parse_task_specs(value):
    """TaskSpecs of a comma-separated string or an iterable of specs, duplicates dropped;
    LongCtxError if none is given."""
    return _specs(value, parse_task_spec, "tasks")
