"""One run's settings (`RunConfig`), methods' own options, and the argument parser every entry point shares."""

import argparse
import re
import sys
from dataclasses import dataclass, field, fields

from longctx.errors import LongCtxError
from longctx.kernels import BACKENDS
from longctx.registry import option_classes

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
DIST_BACKENDS = ("auto", "gloo", "nccl")
BALANCES = ("equal", "auto")
LAUNCHERS = ("local", "ray")
PLACEMENTS = ("pack", "spread")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Default block sizing for contiguous layouts: None = the method's (its planner's `default_balance`):
# ring "equal" (the textbook ring), the others "auto". Measured for APB (benchmarks/results/
# cpu_methods.json, simulated hosts): balanced vs equal blocks 1.04x at 16K on 4 hosts, 1.53x at 32K
# on 4 hosts; benchmarks/results/planner_apb.json: the slowest of 4 CPU workers' compute 1.15x
# shorter at 4K. Estimated (`longctx plan`, 4 hosts, 16K / 128K): apb 1.08x / 1.19x, star 1.17x /
# 1.24x, burst and allgather on --layout contiguous 1.20x / 1.56x (their default layouts are not
# resized); ulysses 1.00x (the same plan) with equal hosts, 1.75x at 16K with --host-speeds 1,1,1,0.5.
BALANCE_DEFAULT = None


@dataclass(init=False)
class RunConfig:
    """Everything a worker needs to build its engine; picklable, sent to every worker.

    Run-wide settings: `layout` None means the method's default; `threads` None splits the
    CPU cores evenly over the local workers. Planner (`longctx.planner`, `longctx.costmodel`):
    `balance` sizes contiguous blocks, "equal" (as equal as possible) or "auto" (equal
    estimated time per host), None = the method's default (`Planner.default_balance`); `host_speeds` gives relative host speeds (host time = cost /
    speed; None = all equal); `costs` is a cost coefficient file (None: the calibrated
    ~/.cache/longctx/costs.json, else shipped defaults).

    Launcher (`launch/`): `launcher` is "local" (processes on this machine) or "ray" (actors on
    a Ray cluster at `ray_address`: None = RAY_ADDRESS, else the cluster running here, else a
    new local one; "auto" = RAY_ADDRESS or the cluster running here; or an address;
    `placement` "pack" or "spread" over its nodes; `ray_cpus_per_worker` CPUs reserved per
    worker, which are its threads on CPU clusters). `worker_env` holds (NAME, VALUE) pairs set
    in every worker's environment (a dict is accepted): the only driver-side variables a Ray
    worker gets besides the job's runtime_env.

    `method_options` holds the options given for methods, by name (anchor_len, intra_size,
    ...): each method declares its own (`Method.Options`) and reads only those. Keywords that
    are not run-wide fields land there: `RunConfig(method="apb", anchor_len=512)`.
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
    ray_address: str = None
    placement: str = "pack"
    ray_cpus_per_worker: int = 1
    worker_env: tuple = ()
    method_options: dict = field(default_factory=dict)

    def __init__(self, **values):
        options = dict(values.pop("method_options", None) or {})
        for item in fields(self):
            if item.name != "method_options":
                setattr(self, item.name, values.pop(item.name, item.default))
        self.method_options = {**options, **values}

    def validate(self):
        """Raise LongCtxError naming the first bad setting; returns self."""
        if self.nproc < 1:
            raise LongCtxError(f"--nproc must be at least 1 (got {self.nproc})")
        for name, allowed in (("device", DEVICES), ("dtype", DTYPES), ("dist_backend", DIST_BACKENDS)):
            if getattr(self, name) not in allowed:
                raise LongCtxError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")
        if self.timeout_s <= 0:
            raise LongCtxError(f"--timeout must be positive (got {self.timeout_s})")
        for name, allowed in (("launcher", LAUNCHERS), ("placement", PLACEMENTS)):
            if getattr(self, name) not in allowed:
                raise LongCtxError(f"--{name} must be one of {', '.join(allowed)} (got {getattr(self, name)!r})")
        self.worker_env = tuple(sorted(dict(self.worker_env or ()).items()))
        for name, value in self.worker_env:
            if not ENV_NAME.fullmatch(str(name)) or not isinstance(value, str):
                raise LongCtxError(f"--worker-env: {name}={value!r} is not NAME=VALUE (a variable name and a string)")
        if self.ray_cpus_per_worker < 1:
            raise LongCtxError(f"--ray-cpus-per-worker must be at least 1 (got {self.ray_cpus_per_worker})")
        if self.balance is not None and self.balance not in BALANCES:
            raise LongCtxError(f"--balance must be one of {', '.join(BALANCES)} (got {self.balance!r})")
        if self.host_speeds is not None:
            speeds = tuple(self.host_speeds)
            if not speeds or not all(isinstance(speed, (int, float)) and speed > 0 for speed in speeds):
                raise LongCtxError(f"--host-speeds must be positive numbers (got {','.join(map(str, speeds))})")
        classes = option_classes([self.method])
        known = {item.name for cls in classes for item in fields(cls)}
        unknown = [name for name in self.method_options if name not in known]
        if unknown:
            raise LongCtxError(f"unknown option {unknown[0]!r}: no method takes it (method options: "
                               f"{', '.join(sorted(known))})")
        for cls in classes:
            make_options(cls, self.method_options)
        return self

    def pool_options(self):
        """Every setting except model, method and nproc, method options included: the keyword
        options of LongContextLM."""
        values = {item.name: getattr(self, item.name) for item in fields(self)
                  if item.name not in ("model", "method", "nproc", "method_options")}
        return {**values, **self.method_options}

    def replace(self, **changes):
        """A copy with `changes` applied (run-wide fields or method options)."""
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        values["method_options"] = dict(self.method_options)
        return RunConfig(**{**values, **changes})


def option(default=None, help="", **flags):
    """A field of a method's options dataclass, with what its `--flag` needs: `help`, argparse
    keywords (`metavar`, `choices`) and the bounds `make_options` checks (`minimum`, `maximum`)."""
    return field(default=default, metadata={"help": help, **flags})


def make_options(cls, values):
    """An instance of the options dataclass `cls` from the entries of `values` it declares, its
    bounds checked (LongCtxError names the flag); None when `cls` is None."""
    if cls is None:
        return None
    declared = fields(cls)
    options = cls(**{item.name: values[item.name] for item in declared if item.name in values})
    for item in declared:
        value, low, high = getattr(options, item.name), item.metadata.get("minimum"), item.metadata.get("maximum")
        flag = "--" + item.name.replace("_", "-")
        if value is None or (low is None or value >= low) and (high is None or value <= high):
            continue
        if high is None:
            raise LongCtxError(f"{flag} must be >= {low} (got {value})")
        raise LongCtxError(f"{flag} must be between {low} and {high} (got {value})")
    return options


def add_run_arguments(parser, *, with_method=True, model_required=True, defaults=None, argv=None, with_nproc=True):
    """Add the shared run options to `parser`: model, method, workers, devices, kernels, layout,
    the planner's options and every method's own options (registered methods, and plug-ins
    named by --method / --methods in `argv`, default the command line). `defaults` overrides
    the defaults of method, nproc and balance; `with_nproc=False` leaves out --nproc (the
    torchrun entry, whose world size is torchrun's)."""
    defaults = {"method": "burst", "nproc": 2, "balance": BALANCE_DEFAULT, **(defaults or {})}
    parser.add_argument("--model", required=model_required, default=None,
                        help="local Hugging Face causal-LM directory" if model_required else
                        "model directory (only its config is read; no weights)")
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
    add_planner_arguments(parser, defaults["balance"])
    add_method_arguments(parser, named_methods(argv))
    return parser


def named_methods(argv=None):
    """Method names given by --method / --methods in `argv` (default: the command line)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    names = []
    for index, arg in enumerate(argv):
        flag, _, value = arg.partition("=")
        if flag in ("--method", "--methods"):
            value = value or (argv[index + 1] if index + 1 < len(argv) else "")
            names.extend(name.strip() for name in value.split(","))
    return names


def add_method_arguments(parser, names=()):
    """One argument group per method options dataclass (see `option_classes`); a flag declared
    by several methods is added once. Absent flags leave no attribute (their defaults live in
    the dataclasses)."""
    for cls, methods in option_classes(names).items():
        group = parser.add_argument_group(f"options of {', '.join(methods)}")
        for item in fields(cls):
            flags = {key: value for key, value in item.metadata.items() if key not in ("help", "minimum", "maximum")}
            shown = "" if item.default is None else f" (default: {item.default})"
            try:
                group.add_argument("--" + item.name.replace("_", "-"), dest=item.name, type=item.type,
                                   default=argparse.SUPPRESS, help=item.metadata.get("help", "") + shown, **flags)
            except argparse.ArgumentError:  # declared by an earlier method
                pass


def add_launcher_arguments(parser):
    """Add --launcher, the Ray launcher's options (--ray-address, --placement,
    --ray-cpus-per-worker) and --worker-env to `parser`; they land in RunConfig's launcher fields."""
    group = parser.add_argument_group("launcher")
    group.add_argument("--launcher", default="local", choices=LAUNCHERS,
                       help="local: worker processes on this machine; ray: one actor per GPU (or per "
                            "--ray-cpus-per-worker CPUs) on a Ray cluster (pip install 'longctx[ray]')")
    group.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="Ray cluster: 'auto' (the one started here), HOST:PORT, [IPV6]:PORT or "
                            "ray://HOST:PORT; default RAY_ADDRESS (set inside `ray job submit`), else the one "
                            "started here, else a new local cluster")
    group.add_argument("--placement", default="pack", choices=PLACEMENTS,
                       help="Ray placement of the workers: pack (fewest nodes) or spread (default: pack)")
    group.add_argument("--ray-cpus-per-worker", type=int, default=1, metavar="K",
                       help="CPUs reserved per Ray worker, its threads on CPU clusters (default: 1)")
    group.add_argument("--worker-env", type=parse_env_pair, action="append", default=[], metavar="NAME=VALUE",
                       help="set NAME=VALUE in every worker's environment (repeatable); with --launcher ray the "
                            "workers get no other variable of the driver's (their nodes set their own NCCL_*, "
                            "GLOO_*), besides the job's runtime_env")
    return parser


def parse_env_pair(text):
    """argparse type of --worker-env: 'NAME=VALUE' -> ('NAME', 'VALUE')."""
    name, sep, value = text.partition("=")
    if not sep or not ENV_NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


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
    """Build a validated RunConfig from parsed arguments (fields not present keep defaults;
    the method options given are the attributes named like an option of a known method)."""
    names = {item.name for item in fields(RunConfig)} - {"method_options"}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    methods = [getattr(args, "method", None) or "", *(getattr(args, "methods", None) or "").split(",")]
    options = {item.name: getattr(args, item.name) for cls in option_classes(methods) for item in fields(cls)
               if hasattr(args, item.name)}
    return RunConfig(**values, method_options=options).validate()


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """`--help` that shows each option's default, except None / False defaults and helps that
    already say theirs."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def make_parser(description):
    """A parser with the shared run options, for entry points that take nothing else."""
    return add_run_arguments(argparse.ArgumentParser(description=description))
