"""Method variants for `longctx eval`: a method with its own options, as one column.

    --methods "dense,apb,apb[compressor=random],apb[passing-len=0],star,burst"

A variant is a registered method's name followed by `[option=value,...]`, options named as
their command-line flags (without `--`; `passing-len` or `passing_len`), their values parsed by
the type the method's `Options` dataclass declares. The variant's options apply on top of the
options given to the whole run; the spec as written is the column's label. This is how one
command compares the parts of a method (APB's ablation) on the very same samples.
"""

from dataclasses import dataclass, field, fields

from longctx.errors import LongCtxError
from longctx.registry import method_class


@dataclass(frozen=True)
class MethodSpec:
    """One column of an evaluation: `label` (the spec as given), the `method` name and its
    own `options` (field names -> parsed values; empty for a plain method name)."""

    label: str
    method: str
    options: dict = field(default_factory=dict, hash=False)


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


def parse_spec(text):
    """A MethodSpec from 'name' or 'name[option=value,...]'; LongCtxError naming an unknown
    option of that method, or a value its type refuses."""
    name, bracket, rest = text.partition("[")
    name = name.strip()
    if not bracket:
        return MethodSpec(text, name, {})
    if not rest.endswith("]"):
        raise LongCtxError(f"--methods: {text!r} must end with ']' (method[option=value,...])")
    options_class = method_class(name).Options
    declared = {item.name: item for item in fields(options_class)} if options_class else {}
    options = {}
    for pair in split_specs(rest[:-1]):
        key, equals, raw = pair.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not equals or not key:
            raise LongCtxError(f"--methods: {pair!r} in {text!r} is not option=value")
        if key not in declared:
            known = ", ".join(sorted(item.replace("_", "-") for item in declared)) or "none"
            raise LongCtxError(f"--methods: method {name!r} has no option {key.replace('_', '-')!r} "
                               f"(its options: {known})")
        kind = declared[key].type
        try:
            options[key] = kind(raw.strip()) if callable(kind) else raw.strip()
        except ValueError:
            raise LongCtxError(f"--methods: {key.replace('_', '-')}={raw.strip()!r} in {text!r} is not "
                               f"a valid {getattr(kind, '__name__', kind)}") from None
    return MethodSpec(text, name, options)


def parse_specs(value):
    """MethodSpecs of a comma-separated string or an iterable of specs, duplicates dropped;
    LongCtxError if none is given."""
    texts = split_specs(value) if isinstance(value, str) else [str(item).strip() for item in value]
    specs = [parse_spec(text) for text in dict.fromkeys(text for text in texts if text)]
    if not specs:
        raise LongCtxError("no methods given")
    return specs
