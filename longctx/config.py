"""One run's settings (`RunConfig`) and the argument parser every entry point shares.

Run-wide settings are RunConfig's fields. The options of the methods and of the launcher a run
uses belong to them (`longctx.options`): each declares an `Options` dataclass, and RunConfig
keeps their values resolved to those declarations (`RunConfig.options`).
"""

import argparse
import re
import sys
from dataclasses import dataclass, field, fields

from longctx.errors import LongCtxError
from longctx.kernels import BACKENDS
from longctx.models.hub import resolve_model
from longctx.models.positions import parse_rope_scaling
from longctx.options import Owner, add_option_arguments, build, options_from_args, resolve
from longctx.registry import (LAUNCHERS, METHODS, family_class, family_names, launcher_class, launcher_names,
                              method_class)

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
DIST_BACKENDS = ("auto", "gloo", "nccl")
BALANCES = ("equal", "auto")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Default block sizing for contiguous layouts: None = the method's (its planner's `default_balance`):
# ring "equal" (the textbook ring), the others "auto". Measured for APB (benchmarks/results/
# cpu_methods.json, simulated hosts): balanced vs equal blocks 1.04x at 16K on 4 hosts, 1.53x at 32K
# on 4 hosts; benchmarks/results/planner_apb.json: the slowest of 4 CPU workers' compute 1.15x
# shorter at 4K. Estimated (`longctx plan`, 4 hosts, 16K / 128K): apb 1.08x / 1.19x, star 1.17x /
# 1.24x, burst and allgather on --layout contiguous 1.20x / 1.56x (their default layouts are not
# resized); ulysses 1.00x (the same plan) with equal hosts, 1.75x at 16K with --host-speeds 1,1,1,0.5.
BALANCE_DEFAULT = None


def method_owner(name):
    """The Owner of method `name` (LongCtxError if unknown or not importable)."""
    return Owner("method", name, method_class(name))


def launcher_owner(name):
    """The Owner of launcher `name` (LongCtxError if unknown or not importable)."""
    return Owner("launcher", name, launcher_class(name))


def known_owners(extra=()):
    """The Owners `extra`, then every registered method and launcher that imports."""
    return [*extra, *_owners(method_owner, METHODS, ()), *_owners(launcher_owner, LAUNCHERS, ())]


@dataclass(init=False)
class RunConfig:
    """Everything a worker needs to build its engine; picklable, sent to every worker.

    Run-wide settings: `layout` None means the method's default; `threads` None splits the
    CPU cores evenly over the local workers. Planner (`longctx.planner`, `longctx.costmodel`):
    `balance` sizes contiguous blocks, "equal" (as equal as possible) or "auto" (equal
    estimated time per host), None = the method's default (`Planner.default_balance`);
    `host_speeds` gives relative host speeds (host time = cost / speed; None = all equal);
    `costs` is a cost coefficient file (None: the calibrated ~/.cache/longctx/costs.json, else
    shipped defaults). `launcher` names how workers come to exist (`longctx.registry.LAUNCHERS`,
    or a plug-in path); `worker_env` holds (NAME, VALUE) pairs set in every worker's
    environment (a dict is accepted): the only driver-side variables a Ray worker gets besides
    the job's runtime_env; `family` the model-family adapter (`longctx.models.family`; None: the
    one the model's config asks for). `model` is a local directory or a Hugging Face Hub id,
    which `resolve_model` resolves to its cached snapshot at `revision` (`longctx.models.hub`);
    `rope_scaling` (transformers' rope dict) and `max_model_len` extend and bound the model's
    positions (`longctx.models.positions`).

    `options` holds the methods' and the launcher's own options, resolved to their
    declarations (`longctx.options`); an owner reads its own with `options_for`. Keywords that
    are not run-wide fields are options given by name and resolved against this run's method
    and launcher: `RunConfig(method="apb", anchor_len=512)`, `RunConfig(launcher="ray",
    ray_address="auto")`; `RunConfig.for_methods` resolves them against several methods.
    """

    model: str = ""
    method: str = "burst"
    nproc: int = 2
    device: str = "auto"
    dtype: str = "auto"
    dist_backend: str = "auto"
    kernel_backend: str = "auto"
    timeout_s: float = 300.0
    layout: str = None
    threads: int = None
    balance: str = BALANCE_DEFAULT
    host_speeds: tuple = None
    costs: str = None
    launcher: str = "local"
    worker_env: tuple = ()
    family: str = None
    revision: str = None
    rope_scaling: dict = None
    max_model_len: int = None
    options: dict = field(default_factory=dict)

    def __init__(self, **values):
        self._set(values, None)

    @classmethod
    def for_methods(cls, methods, **values):
        """A RunConfig whose options given by name are resolved against every method of
        `methods` (one run of several methods: compare, eval) and the launcher; `method`
        defaults to the first."""
        config = cls.__new__(cls)
        config._set({"method": methods[0], **values}, list(dict.fromkeys(methods)))
        return config

    def _set(self, values, methods):
        values = dict(values)
        options = dict(values.pop("options", None) or {})
        for item in fields(self):
            if item.name != "options":
                setattr(self, item.name, values.pop(item.name, item.default))
        if values:
            owners = [method_owner(name) for name in (methods or [self.method])] + [launcher_owner(self.launcher)]
            options.update(resolve(values, owners, known_owners(owners)))
        self.options = options

    def owners(self):
        """The Owners in play: this run's method and launcher."""
        return [method_owner(self.method), launcher_owner(self.launcher)]

    def options_for(self, owner_class):
        """The options instance of `owner_class` (a method or launcher class) from this config,
        defaults where nothing was given; None when it declares none."""
        return build(owner_class.Options, self.options)

    def option_values(self):
        """{option name: value} of the options given (for display; `options` is keyed by declaration)."""
        return {key.rpartition(".")[2]: value for key, value in self.options.items()}

    def validate(self):
        """Raise LongCtxError naming the first bad setting; returns self."""
        if self.nproc < 1:
            raise LongCtxError(f"--nproc must be at least 1 (got {self.nproc})")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise LongCtxError(f"rope_scaling must be a dict such as {{'rope_type': 'yarn', 'factor': 4.0}} "
                               f"(got {self.rope_scaling!r})")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise LongCtxError(f"--max-model-len must be at least 1 (got {self.max_model_len})")
        for name, allowed in (("device", DEVICES), ("dtype", DTYPES), ("dist_backend", DIST_BACKENDS)):
            if getattr(self, name) not in allowed:
                raise LongCtxError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")
        if self.timeout_s <= 0:
            raise LongCtxError(f"--timeout must be positive (got {self.timeout_s})")
        self.worker_env = tuple(sorted(dict(self.worker_env or ()).items()))
        for name, value in self.worker_env:
            if not ENV_NAME.fullmatch(str(name)) or not isinstance(value, str):
                raise LongCtxError(f"--worker-env: {name}={value!r} is not NAME=VALUE (a variable name and a string)")
        if self.balance is not None and self.balance not in BALANCES:
            raise LongCtxError(f"--balance must be one of {', '.join(BALANCES)} (got {self.balance!r})")
        if self.host_speeds is not None:
            speeds = tuple(self.host_speeds)
            if not speeds or not all(isinstance(speed, (int, float)) and speed > 0 for speed in speeds):
                raise LongCtxError(f"--host-speeds must be positive numbers (got {','.join(map(str, speeds))})")
        for owner in self.owners():
            self.options_for(owner.cls)
        return self

    def resolve_model(self):
        """Resolve a Hub id in `model` to the directory of its cached snapshot at `revision`
        (`longctx.models.hub`: downloaded first unless offline); returns self. Called where the
        model is first opened (`longctx.request.Session`, compare, eval), after the run's other
        checks, so that a bad option is reported before any look-up."""
        if self.model:
            self.model, self.revision = resolve_model(self.model, self.revision), None
        return self

    def pool_options(self):
        """Every setting except model, method and nproc, the resolved options included: the
        keyword options of LongContextLM."""
        return {item.name: getattr(self, item.name) for item in fields(self)
                if item.name not in ("model", "method", "nproc")}

    def replace(self, **changes):
        """A copy with `changes` applied: run-wide fields, `options` (merged over these), or
        options by name (resolved against the copy's method and launcher)."""
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        values["options"] = {**self.options, **changes.pop("options", {})}
        return RunConfig(**{**values, **changes})


def add_run_arguments(parser, *, with_method=True, model_required=True, defaults=None, argv=None, with_nproc=True):
    """Add the shared run options to `parser`: model, method, workers, devices, kernels, layout,
    the planner's options and every method's own options (registered methods, and plug-ins
    named by --method / --methods in `argv`, default the command line). `defaults` overrides
    the defaults of method, nproc and balance; `with_nproc=False` leaves out --nproc (the
    torchrun entry, whose world size is torchrun's)."""
    defaults = {"method": "burst", "nproc": 2, "balance": BALANCE_DEFAULT, **(defaults or {})}
    parser.add_argument("--model", required=model_required, default=None,
                        help="Hugging Face causal-LM: a local directory or a Hub id (org/name, from the cache "
                             "under HF_HOME, downloaded unless HF_HUB_OFFLINE=1; safetensors only, no code)"
                        if model_required else "model directory or Hub id (only its config is read; no weights)")
    add_model_arguments(parser)
    if with_method:
        parser.add_argument("--method", default=defaults["method"], help="prefill method (see `longctx methods`)")
    if with_nproc:
        parser.add_argument("--nproc", type=int, default=defaults["nproc"], help="number of workers (hosts)")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="auto: CUDA when available; also whose cost coefficients plans use")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--dist-backend", default="auto", choices=DIST_BACKENDS)
    parser.add_argument("--kernel-backend", default="auto", choices=BACKENDS,
                        help="attention kernels: auto (PyTorch's fused kernels; on CUDA Triton or cuDNN where "
                             "`longctx plan --calibrate --device cuda` measured them faster), torch, flash-attn "
                             "(needs the flash_attn package), triton, or reference (the chunked test oracle)")
    parser.add_argument("--timeout", type=float, default=300.0, dest="timeout_s",
                        help="seconds any collective may wait before the job fails")
    parser.add_argument("--layout", default=None,
                        help="token layout: contiguous, zigzag or striped (default: the method's)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per worker")
    parser.add_argument("--family", default=None, metavar="NAME",
                        help="model-family adapter (default: the one the model's config asks for; a plug-in "
                             "as package.module:ClassName)")
    add_planner_arguments(parser, defaults["balance"])
    add_option_arguments(parser, _owners(method_owner, METHODS, named(argv, ("--method", "--methods"))))
    return parser


def add_model_arguments(parser):
    """Add --revision, --rope-scaling and --max-model-len (what a run makes of the model)."""
    parser.add_argument("--revision", default=None,
                        help="with a Hub id: the branch, tag or commit to use (default: main)")
    parser.add_argument("--rope-scaling", type=parse_rope_scaling, default=None, metavar="JSON",
                        help="RoPE scaling applied to the model's config, transformers' rope dict, e.g. "
                             "'{\"rope_type\": \"yarn\", \"factor\": 4.0, \"original_max_position_embeddings\": 32768}' "
                             "(its positions times the factor become the limit)")
    parser.add_argument("--max-model-len", type=int, default=None, metavar="TOKENS",
                        help="longest request (document + question + new tokens); default: the model's positions, "
                             "times the --rope-scaling factor")
    return parser


def _owners(make, table, names):
    """Owners (made by `make`) of everything registered in `table` and of the plug-ins among
    `names`. A plug-in that does not import is a LongCtxError here, before argument parsing
    could blame its options ("unrecognized arguments: --uneven-seed")."""
    owners = []
    for name in table:
        try:
            owners.append(make(name))
        except LongCtxError:  # reported where it is used
            continue
    return owners + [make(name) for name in dict.fromkeys(names) if ":" in name and name not in table]


def named(argv, flags):
    """Names given by `flags` (e.g. --method / --methods) in `argv` (default: the command line),
    comma-separated lists split and eval variants' brackets dropped."""
    argv = sys.argv[1:] if argv is None else list(argv)
    names = []
    for index, arg in enumerate(argv):
        flag, _, value = arg.partition("=")
        if flag in flags:
            value = value or (argv[index + 1] if index + 1 < len(argv) else "")
            try:
                names.extend(spec_name(part) for part in split_specs(value, flag))
            except LongCtxError:  # reported when the command reads the value
                continue
    return names


def split_specs(value, flag):
    """The comma-separated specs of `value` (given by `flag`), commas inside [...] kept:
    'a,b[x=1,y=2]' -> ['a', 'b[x=1,y=2]'] (eval variants). LongCtxError on unbalanced brackets."""
    specs, depth, current = [], 0, ""
    for char in value:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            raise LongCtxError(f"{flag}: unbalanced brackets in {value!r}")
        if char == "," and depth == 0:
            specs.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise LongCtxError(f"{flag}: unbalanced brackets in {value!r}")
    return [spec.strip() for spec in [*specs, current] if spec.strip()]


def spec_name(spec):
    """The method or task name of an eval spec: 'apb[compressor=random]' -> 'apb'."""
    return spec.partition("[")[0].strip()


def add_launcher_arguments(parser, argv=None):
    """Add --launcher, --worker-env and every launcher's own options (registered launchers, and
    a plug-in named by --launcher in `argv`) to `parser`."""
    group = parser.add_argument_group("launcher")
    group.add_argument("--launcher", default="local", metavar="NAME",
                       help=f"how workers come to exist: {', '.join(launcher_names())} (local: worker processes on "
                            "this machine; ray: one actor per GPU, or per --ray-cpus-per-worker CPUs, on a Ray "
                            "cluster, pip install 'longctx[ray]'), or a plug-in as package.module:ClassName")
    group.add_argument("--worker-env", type=parse_env_pair, action="append", default=[], metavar="NAME=VALUE",
                       help="set NAME=VALUE in every worker's environment (repeatable); with --launcher ray the "
                            "workers get no other variable of the driver's (their nodes set their own NCCL_*, "
                            "GLOO_*), besides the job's runtime_env")
    add_option_arguments(parser, _owners(launcher_owner, LAUNCHERS, named(argv, ("--launcher",))))
    return parser


def parse_env_pair(text):
    """argparse type of --worker-env: 'NAME=VALUE' -> ('NAME', 'VALUE')."""
    name, sep, value = text.partition("=")
    if not sep or not ENV_NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def add_request_arguments(parser):
    """Add what one request asks (`longctx generate`, the torchrun entry): --doc or --video (with
    --frames / --fps / --max-pixels / --max-frames), --question, --max-new-tokens, and --json; read by
    `longctx.request.prompt_from_args`."""
    parser.add_argument("--doc", default=None, help="document file ('-' reads standard input)")
    add_video_arguments(parser, "video file (decoded with PyAV), instead of --doc")
    parser.add_argument("--question", default=None,
                        help="question text appended after the document (omitted: the document is continued)")
    parser.add_argument("--max-new-tokens", type=int, default=32,
                        help="at most this many answer tokens (greedy; stops early at the model's end token)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress line on stderr (it is shown only on a terminal, never with --json)")
    return parser


def add_video_arguments(parser, video_help):
    """Add --video (help `video_help`) and its sampling options --frames / --fps / --max-pixels /
    --max-frames in a group of their own (`generate`, the torchrun entry, `compare`)."""
    video = parser.add_argument_group(f"video (a video-language model: {', '.join(video_families())})")
    video.add_argument("--video", default=None, help=video_help)
    video.add_argument("--frames", type=int, default=None,
                       help="sample this many frames, evenly spaced (default: every frame, or --fps)")
    video.add_argument("--fps", type=float, default=None,
                       help="sample this many frames per second of video (at least the processor's minimum, 4 for "
                            "Qwen2.5-VL, and at most --max-frames)")
    video.add_argument("--max-pixels", type=int, default=None,
                       help="resize each frame to at most this many pixels (default: the model's processor setting)")
    video.add_argument("--max-frames", type=int, default=None,
                       help="sample at most this many frames with --fps (default: the model's processor setting)")
    return video


def video_families():
    """Registered model families whose prompts are videos."""
    return [name for name in family_names() if family_class(name).media == "video"]


def parse_speeds(text):
    """argparse type of --host-speeds: '1,1,0.5' -> (1.0, 1.0, 0.5)."""
    try:
        speeds = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(speed > 0 for speed in speeds):
        raise argparse.ArgumentTypeError(f"speeds must be positive, got {text!r}")
    return speeds


def add_planner_arguments(parser, balance_default=BALANCE_DEFAULT):
    """Add --balance, --host-speeds and --costs (the planner's options) to `parser`."""
    shown = balance_default or "the method's: equal for ring, auto for the others; plan shows both"
    parser.add_argument("--balance", default=balance_default, choices=BALANCES,
                        help=f"contiguous block sizes: equal, or auto = equal estimated time per host "
                             f"(default: {shown})")
    parser.add_argument("--host-speeds", type=parse_speeds, default=None, metavar="S0,S1,...",
                        help="relative host speeds for balancing and estimates (host time = cost / speed)")
    parser.add_argument("--costs", default=None, metavar="FILE",
                        help="cost coefficients file (default: calibrated ~/.cache/longctx/costs.json, "
                             "else shipped defaults)")
    return parser


def config_from_args(args):
    """A validated RunConfig from parsed arguments: the run-wide fields present (others keep
    their defaults) and the owners' options given, resolved against the method (--method) or
    every method (--methods, eval variants included) and the launcher."""
    names = {item.name for item in fields(RunConfig)} - {"options"}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    methods = [getattr(args, "method", None) or spec_name(spec)
               for spec in (split_specs(args.methods, "--methods") if getattr(args, "methods", None) else [None])]
    return RunConfig.for_methods(methods, **values, **options_from_args(args)).validate()


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """`--help` that shows each option's default, except None / False defaults and helps that
    already say theirs."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"
