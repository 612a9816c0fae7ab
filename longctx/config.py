"""One run's settings (`RunConfig`) and the argument parser every entry point shares."""

import argparse
from dataclasses import asdict, dataclass, fields

from longctx.errors import LongCtxError
from longctx.kernels import BACKENDS

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
DIST_BACKENDS = ("auto", "gloo", "nccl")
BALANCES = ("equal", "auto")
# Default block sizing for contiguous layouts: "auto". Measured (benchmarks/results/cpu_methods.json,
# simulated hosts): APB balanced vs equal blocks 1.04x at 16K on 4 hosts, 1.53x at 32K on 4 hosts;
# benchmarks/results/planner_apb.json: the slowest of 4 CPU workers' compute 1.15x shorter at 4K.
BALANCE_DEFAULT = "auto"


@dataclass
class RunConfig:
    """Everything a worker needs to build its engine; picklable, sent to every worker.

    `layout` None means the method's default; `intra_size` > 0 turns on BurstAttention's
    double ring with that many ranks per inner ring; `threads` None splits the CPU cores
    evenly over the local workers.

    APB / StarAttention: `anchor_len` / `passing_len` are token counts (None = the published
    rule, l_a = l_b/4 and l_p = l_b/8 of the block l_b; Star's anchor is the first block);
    `anchor_ratio` / `passing_ratio` give them as fractions of the block instead;
    `anchor_head_tokens` leading document tokens precede the question in APB's anchor;
    `compressor` picks how passing blocks are chosen (query, retaining-heads, random) and
    `retaining_heads` is the safetensors file of trained retaining heads.

    Planner (`longctx.plan`, `longctx.costmodel`): `balance` sizes contiguous blocks, "equal"
    (as equal as possible) or "auto" (equal estimated time per host); `host_speeds` gives
    relative host speeds (host time = cost / speed; None = all equal); `costs` is a cost
    coefficient file (None: the calibrated ~/.cache/longctx/costs.json, else shipped defaults).
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
    intra_size: int = 0
    threads: int = None
    anchor_len: int = None
    passing_len: int = None
    anchor_ratio: float = None
    passing_ratio: float = None
    anchor_head_tokens: int = 16
    compressor: str = "query"
    retaining_heads: str = None
    balance: str = BALANCE_DEFAULT
    host_speeds: tuple = None
    costs: str = None

    def validate(self):
        """Raise LongCtxError naming the first bad setting; returns self."""
        if self.nproc < 1:
            raise LongCtxError(f"--nproc must be at least 1 (got {self.nproc})")
        for name, allowed in (("device", DEVICES), ("dtype", DTYPES), ("dist_backend", DIST_BACKENDS)):
            if getattr(self, name) not in allowed:
                raise LongCtxError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")
        if self.timeout_s <= 0:
            raise LongCtxError(f"--timeout must be positive (got {self.timeout_s})")
        if self.intra_size < 0:
            raise LongCtxError(f"--intra-size must be >= 0 (got {self.intra_size})")
        for name in ("anchor_len", "passing_len", "anchor_head_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise LongCtxError(f"--{name.replace('_', '-')} must be >= 0 (got {value})")
        if self.balance not in BALANCES:
            raise LongCtxError(f"--balance must be one of {', '.join(BALANCES)} (got {self.balance!r})")
        if self.host_speeds is not None:
            speeds = tuple(self.host_speeds)
            if not speeds or not all(isinstance(speed, (int, float)) and speed > 0 for speed in speeds):
                raise LongCtxError(f"--host-speeds must be positive numbers (got {','.join(map(str, speeds))})")
        for name in ("anchor_ratio", "passing_ratio"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise LongCtxError(f"--{name.replace('_', '-')} must be between 0 and 1 (got {value})")
        return self

    def pool_options(self):
        """Every field except model, method and nproc: the keyword options of LongContextLM."""
        return {key: value for key, value in asdict(self).items() if key not in ("model", "method", "nproc")}

    def replace(self, **changes):
        """A copy with `changes` applied."""
        values = asdict(self)
        values.update(changes)
        return RunConfig(**values)


def add_run_arguments(parser, *, with_method=True):
    """Add the shared run options (model, method, workers, devices, method options) to `parser`."""
    parser.add_argument("--model", required=True, help="local Hugging Face causal-LM directory")
    if with_method:
        parser.add_argument("--method", default="burst", help="prefill method (see `longctx methods`)")
    parser.add_argument("--nproc", type=int, default=2, help="number of workers")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--dist-backend", default="auto", choices=DIST_BACKENDS)
    parser.add_argument("--kernel-backend", default="auto", choices=BACKENDS,
                        help="attention kernels: auto (Triton on CUDA, torch's fused kernels on the CPU), "
                             "torch, reference (the chunked test oracle) or triton")
    parser.add_argument("--timeout", type=float, default=300.0, dest="timeout_s",
                        help="seconds any collective may wait before the job fails")
    parser.add_argument("--layout", default=None, help="token layout: contiguous, zigzag or striped")
    parser.add_argument("--intra-size", type=int, default=0,
                        help="burst: ranks per inner ring of the double ring (0 = single ring)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per worker")
    parser.add_argument("--anchor-len", type=int, default=None,
                        help="apb/star: anchor tokens (default: apb l_b/4, star the first block)")
    parser.add_argument("--passing-len", type=int, default=None,
                        help="apb: passing tokens each host sends per KV head (default l_b/8)")
    parser.add_argument("--anchor-ratio", type=float, default=None, help="apb/star: anchor as a fraction of the block")
    parser.add_argument("--passing-ratio", type=float, default=None, help="apb: passing as a fraction of the block")
    parser.add_argument("--anchor-head-tokens", type=int, default=16,
                        help="apb: leading document tokens placed before the question in the anchor")
    parser.add_argument("--compressor", default="query",
                        help="apb: how passing blocks are chosen: query, retaining-heads or random")
    parser.add_argument("--retaining-heads", default=None, metavar="FILE",
                        help="apb: safetensors file of retaining heads (python -m apb.train_heads)")
    add_planner_arguments(parser)
    return parser


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
    shown = balance_default or "both, side by side"
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
    """Build a validated RunConfig from parsed arguments (fields not present keep defaults)."""
    names = {item.name for item in fields(RunConfig)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return RunConfig(**values).validate()


def make_parser(description):
    """A parser with the shared run options, for entry points that take nothing else."""
    return add_run_arguments(argparse.ArgumentParser(description=description))
