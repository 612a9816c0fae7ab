"""Options that belong to their owner: a method's (or a launcher's) own settings.

An owner (a `longctx.method.Method` subclass, a launcher class) sets `Options` to a dataclass
whose fields are made with `option(...)`. Each field is one *declaration* (`Declaration`);
its command-line flag is `--field-name`, or `--name / --no-name` for a `bool` field (eval
variants write `apb[passing-len=0]`, `spava[overlap=false]`).

**A flag is shared only when its meaning is.** Two owners share an option exactly when they
get the field from the same class: one options dataclass (ring and burst both use
`RingOptions`; apb and star `APBOptions`), or a dataclass one of them inherits (the uneven
ring plug-in's options inherit `RingOptions.intra_size`). Two classes that each declare a
field of the same name declare two options with the same flag: `--anchor-len` sets APB's
field for apb and star, and Spava's own field for spava; `--help` shows each with its own text
and default.

Values are resolved to declarations once (`resolve`): a value given by name (a flag, a
keyword of `RunConfig` or `LongContextLM`) goes to the one declaration of that name among the
owners in play (the methods and the launcher a run uses). A name none of them declares is one
error naming the owners that do; a name two of them declare differently (apb and spava in one
eval run) is one error asking for a per-method variant. Resolved values are stored by
`Declaration.key`, so an owner reads only its own (`build`).
"""

import argparse
from dataclasses import dataclass, field, fields

from longctx.errors import LongCtxError

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def option(default=None, help="", **flags):
    """A field of an owner's options dataclass, with what its `--flag` needs: `help`, `metavar`,
    `choices`, and the bounds `Declaration.check` enforces (`minimum`, `maximum`)."""
    return field(default=default, metadata={"help": help, **flags})


@dataclass(frozen=True)
class Owner:
    """Something that declares options: `kind` ("method", "launcher"), its `name` as the user
    writes it, and its class (whose `Options` is the dataclass, or None)."""

    kind: str
    name: str
    cls: type

    def __str__(self):
        return f"{self.kind} {self.name!r}"

    def declarations(self):
        """This owner's Declarations, in field order (none without `Options`)."""
        return declarations(self.cls.Options) if self.cls.Options is not None else []


@dataclass(frozen=True)
class Declaration:
    """One option: field `name` of an options dataclass, declared in the body of class `owner`
    (the base-most class of the dataclass's MRO that declares it)."""

    owner: type
    field: object

    @property
    def name(self):
        return self.field.name

    @property
    def flag(self):
        """The command-line flag, `--anchor-len`."""
        return "--" + self.name.replace("_", "-")

    @property
    def key(self):
        """Where a resolved value is stored: 'apb.method.APBOptions.anchor_len'."""
        return f"{self.owner.__module__}.{self.owner.__qualname__}.{self.name}"

    @property
    def switch(self):
        """True for a bool option (`--name / --no-name`)."""
        return self.field.type is bool

    @property
    def help(self):
        """The help text with the default."""
        text, default = self.field.metadata.get("help", ""), self.field.default
        if self.switch:
            return f"{text} (default: {'on' if default else 'off'})"
        return text if default is None else f"{text} (default: {default})"

    @property
    def metavar(self):
        choices = self.field.metadata.get("choices")
        return self.field.metadata.get("metavar") or ("{" + ",".join(choices) + "}" if choices else self.name.upper())

    def parse(self, value):
        """`value` as this option's type: text (a flag's or a variant's) is converted, other
        values are taken as given. LongCtxError naming the flag for text the type refuses."""
        kind = self.field.type
        if kind is bool and not isinstance(value, str):
            if value in (0, 1):  # True, False, 1, 0
                return bool(value)
            raise LongCtxError(f"{self.flag}: {value!r} is not {self.expected}")
        if not isinstance(value, str) or kind is str:
            return value
        if kind is bool:
            word = value.strip().lower()
            if word in TRUE_WORDS + FALSE_WORDS:
                return word in TRUE_WORDS
        else:
            try:
                return kind(value.strip())
            except (TypeError, ValueError):
                pass
        raise LongCtxError(f"{self.flag}: {value!r} is not {self.expected}")

    @property
    def expected(self):
        """What a value must be, in words: 'a valid int', 'true or false'."""
        kind = self.field.type
        return "true or false" if kind is bool else f"a valid {getattr(kind, '__name__', kind)}"

    def check(self, value):
        """LongCtxError naming the flag unless `value` is in this option's choices and bounds;
        returns it."""
        meta = self.field.metadata
        choices, low, high = meta.get("choices"), meta.get("minimum"), meta.get("maximum")
        if value is None:
            return value
        if choices is not None and value not in choices:
            raise LongCtxError(f"{self.flag} must be one of {', '.join(choices)} (got {value!r})")
        if (low is None or value >= low) and (high is None or value <= high):
            return value
        if high is None:
            raise LongCtxError(f"{self.flag} must be >= {low} (got {value})")
        raise LongCtxError(f"{self.flag} must be between {low} and {high} (got {value})")


def declarations(options_class):
    """The Declarations of an options dataclass, in field order."""
    found = []
    for item in fields(options_class):
        owner = next(klass for klass in reversed(options_class.__mro__)
                     if item.name in vars(klass).get("__annotations__", {}))
        found.append(Declaration(owner, item))
    return found


def _names(owners):
    """'method 'apb'', 'methods 'apb' and 'star'', 'method 'burst' and launcher 'local''."""
    by_kind = {}
    for owner in owners:
        by_kind.setdefault(owner.kind, []).append(repr(owner.name))
    parts = []
    for kind, names in by_kind.items():
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        parts.append(f"{kind}{'s' if len(names) > 1 else ''} {listed}")
    return " and ".join(parts)


def resolve(values, owners, known=()):
    """{Declaration.key: checked value} of `values` ({option name: value}) for the `owners` in
    play. `known` are all owners that could declare options (for the error naming who takes a
    foreign option). LongCtxError (one line) for a name none of `owners` declares, or that two
    of them declare differently."""
    resolved = {}
    for name, value in values.items():
        name = name.replace("-", "_")
        found = {}
        for owner in owners:
            for declaration in owner.declarations():
                if declaration.name == name:
                    found.setdefault(declaration.key, (declaration, []))[1].append(owner)
        flag = "--" + name.replace("_", "-")
        if not found:
            takers = [owner for owner in known if any(item.name == name for item in owner.declarations())]
            if not takers:
                raise LongCtxError(f"unknown option {flag}")
            raise LongCtxError(f"{flag} is not an option of {_names(owners)} (it is one of {_names(takers)})")
        if len(found) > 1:
            groups = [_names(takers) for _, takers in found.values()]
            example = next(iter(found.values()))[1][0].name
            raise LongCtxError(f"{flag} means different things to {' and to '.join(groups)}: give it for one "
                               f"method, e.g. {example}[{flag[2:]}=...]")
        (declaration, _), = found.values()
        resolved[declaration.key] = declaration.check(declaration.parse(value))
    return resolved


def build(options_class, stored):
    """An instance of `options_class` from the `stored` values ({Declaration.key: value}) it
    declares, defaults for the rest; None when `options_class` is None."""
    if options_class is None:
        return None
    values = {item.name: stored[item.key] for item in declarations(options_class) if item.key in stored}
    return options_class(**values)


def given(options_class, stored):
    """{option name: value} of the `stored` values `options_class` declares (what was set)."""
    if options_class is None:
        return {}
    return {item.name: stored[item.key] for item in declarations(options_class) if item.key in stored}


DEST = "option:"  # argparse destination prefix of owners' options


def add_option_arguments(parser, owners):
    """One argument group per options dataclass of `owners` ("options of apb, star"), each
    flag with its own help and default. A flag declared by several classes is parsed by one
    argparse action (the value is stored as given, under DEST + name, and converted per
    declaration by `resolve`) and shown in every group that declares it. Absent flags leave no
    attribute."""
    classes = {}
    for owner in owners:
        if owner.cls.Options is not None:
            classes.setdefault(owner.cls.Options, []).append(owner)
    actions = {}
    for options_class, users in classes.items():
        kinds = {owner.kind for owner in users}
        title = ", ".join(owner.name for owner in users)
        group = parser.add_argument_group(f"options of {title}" if kinds == {"method"} else
                                          f"options of {' / '.join(sorted(kinds))} {title}")
        for declaration in declarations(options_class):
            flags = [declaration.flag] + (["--no-" + declaration.flag[2:]] if declaration.switch else [])
            if declaration.flag not in actions:
                if declaration.switch:
                    actions[declaration.flag] = group.add_argument(
                        declaration.flag, dest=DEST + declaration.name, action=argparse.BooleanOptionalAction,
                        default=argparse.SUPPRESS, help=declaration.help)
                else:
                    actions[declaration.flag] = group.add_argument(
                        declaration.flag, dest=DEST + declaration.name, default=argparse.SUPPRESS,
                        metavar=declaration.metavar, help=declaration.help)
            elif actions[declaration.flag].nargs == 0 and not declaration.switch or \
                    actions[declaration.flag].nargs != 0 and declaration.switch:
                raise LongCtxError(f"{declaration.flag} is a switch for one method and takes a value for another")
            else:  # already parsed by an earlier group's action: listed here too, with this text
                shown = argparse.Action(flags, DEST + declaration.name, nargs=0 if declaration.switch else None,
                                        metavar=None if declaration.switch else declaration.metavar,
                                        help=declaration.help)
                group._group_actions.append(shown)  # argparse lists a group's actions from this list
    return parser


def options_from_args(args):
    """{option name: value as given} of the owners' options present in parsed `args`."""
    return {name[len(DEST):]: value for name, value in vars(args).items() if name.startswith(DEST)}
