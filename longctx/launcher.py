"""What a launcher is: how a pool of workers comes to exist and serves requests (`Launcher`).

A launcher registers itself like a method: one line in `longctx.registry.LAUNCHERS` (or a
plug-in named "package.module:ClassName" with `--launcher`), and its own options as an
`Options` dataclass (`longctx.options`; the Ray launcher's `--ray-address`, ...), which become
flags of `generate`, `compare` and `eval` and keywords of `LongContextLM`. The local launcher
(`launch.local.LocalLauncher`) and the Ray launcher (`launch.ray.RayLauncher`) satisfy it;
`tests/test_interfaces.py` checks each registered one.
"""

from typing import Any, ClassVar, Generator, Protocol, runtime_checkable


@runtime_checkable
class Launcher(Protocol):
    """A pool of `world` workers, started by `Launcher(config)` (a RunConfig: `config.nproc`
    workers, each building an engine with `worker_config(config)`), serving one request at a
    time until `close()` or `abort()`.

    `name` is its registry name; `runs_here` is True when its workers run on this machine (the
    request path then checks this machine's devices and memory for them); `Options` its options
    dataclass (None: none).
    """

    name: ClassVar[str]
    runs_here: ClassVar[bool]
    Options: ClassVar[Any]
    world: int

    @classmethod
    def worker_config(cls, config: Any) -> Any:
        """The RunConfig the workers will run for `config` (e.g. the device "auto" resolves to
        on them), which the driver plans with; may connect to a cluster."""
        ...

    def run(self, request: Any) -> Any:
        """Send `request` (a `longctx.engine.Request`) to every worker; returns rank 0's
        `longctx.results.EngineResult`. A worker's failure stops every worker and raises one
        LongCtxError (the user's input) or WorkerError."""
        ...

    def stream(self, request: Any) -> Generator[int, None, Any]:
        """Like `run`, as a generator yielding each generated token id (from rank 0) as soon as
        it is decided; its return value is rank 0's EngineResult. A reader that stops early
        leaves the request to finish without it; the pool stays usable."""
        ...

    def abort(self) -> None:
        """Kill every worker now (a request in flight is lost); later requests are refused."""
        ...

    def close(self) -> None:
        """Stop every worker gracefully (then as `abort`)."""
        ...
