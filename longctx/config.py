"""One run's settings (`RunConfig`) and the argument parser every entry point shares."""

import argparse
from dataclasses import asdict, dataclass, fields

from longctx.errors import LongCtxError

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
DIST_BACKENDS = ("auto", "gloo", "nccl")


@dataclass
class RunConfig:
    """Everything a worker needs to build its engine; picklable, sent to every worker.

    `layout` None means the method's default; `intra_size` > 0 turns on BurstAttention's
    double ring with that many ranks per inner ring; `threads` None splits the CPU cores
    evenly over the local workers.
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
        return self

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
    parser.add_argument("--kernel-backend", default="auto", choices=("auto", "torch", "triton"))
    parser.add_argument("--timeout", type=float, default=300.0, dest="timeout_s",
                        help="seconds any collective may wait before the job fails")
    parser.add_argument("--layout", default=None, help="token layout: contiguous, zigzag or striped")
    parser.add_argument("--intra-size", type=int, default=0,
                        help="burst: ranks per inner ring of the double ring (0 = single ring)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per worker")
    return parser


def config_from_args(args):
    """Build a validated RunConfig from parsed arguments (fields not present keep defaults)."""
    names = {item.name for item in fields(RunConfig)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return RunConfig(**values).validate()


def make_parser(description):
    """A parser with the shared run options, for entry points that take nothing else."""
    return add_run_arguments(argparse.ArgumentParser(description=description))
