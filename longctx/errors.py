"""User-facing error types: one clear line naming the problem."""


class LongCtxError(Exception):
    """Bad input or configuration; the CLI prints it as one line and exits non-zero."""


class WorkerError(LongCtxError):
    """A worker failed or died; every other worker has been stopped."""


class CollectiveError(RuntimeError):
    """A collective did not complete on this worker: a peer died, hung past the timeout, or
    could not be reached. Raised by `longctx.comm.ProcessGroupComm`; launchers report it for the worker."""
