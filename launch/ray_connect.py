"""How the Ray launcher's driver finds and joins its Ray cluster, within the job's timeout.

`connect(address, timeout_s)` is the whole path, called once per driver process:

1. Token authentication: Ray (2.5x and later) turns it on for a cluster whose `ray start` finds
   a token (~/.ray/auth_token, made by `ray get-auth-token --generate` or by the first local
   `ray.init()`), but a client with RAY_AUTH_MODE unset sends none and fails ("Missing
   authentication token"). When RAY_AUTH_MODE is unset and a token is available, this driver
   sends it (`use_available_token`); a cluster without authentication ignores it.
2. The address: `--ray-address` as given (HOST:PORT, [IPv6]:PORT or ray://HOST:PORT), else
   RAY_ADDRESS, else the address the last `ray start` on this machine saved (RAY_TMPDIR, else
   TMPDIR, else /tmp, then ray/ray_current_cluster), else a new local cluster ("auto": never a
   new one). `resolve_address` says which, so an error can name where a stale address came from.
3. A TCP connection to it must open (Ray itself retries an address for minutes, also one whose
   cluster died without `ray stop`), then `ray.init` runs in a helper thread and must finish
   within `timeout_s`: the driver's main thread waits, so Ctrl-C ends it at once.
4. A Ray client address (ray://) whose server answers "Initialization failure from server" is
   tried again, up to CLIENT_TRIES times within the same `timeout_s`: Ray's client proxy forks
   a server process per client, and that fork dies now and then (ray-project/ray#63202, a few
   per cent of connections; seen here on a loaded machine), which a second try gets past.
"""

import logging
import os
import socket
import threading
import time
from pathlib import Path

from longctx.errors import LongCtxError

CONNECT_S = 10.0  # at most this long for the TCP check of an address (less when --timeout is shorter)
CLIENT_TRIES = 3  # tries of a ray:// address whose client server failed to start (step 4 above)
CLIENT_START_FAILED = "Initialization failure from server"


def split_address(address):
    """("ray://" or "", host, port) of "HOST:PORT", "[IPV6]:PORT" or "ray://..." of either;
    LongCtxError for anything else."""
    scheme = "ray://" if address.startswith("ray://") else ""
    rest = address.removeprefix(scheme)
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or (":" in host and not rest.startswith("[")):
        raise LongCtxError(f"--ray-address {address!r}: expected auto, HOST:PORT, [IPV6]:PORT or ray://HOST:PORT")
    return scheme, host, int(port)


def saved_address_file(environ=None):
    """Where `ray start` saves the address of the cluster it started on this machine."""
    environ = os.environ if environ is None else environ
    base = environ.get("RAY_TMPDIR") or environ.get("TMPDIR") or "/tmp"
    return Path(base) / "ray" / "ray_current_cluster"


def resolve_address(address, environ=None):
    """(address to connect to, or None for a new local cluster; where it came from, in words)
    for `--ray-address` `address` (None, "auto", or an address)."""
    environ = os.environ if environ is None else environ
    if address not in (None, "auto"):
        return address, "--ray-address"
    if environ.get("RAY_ADDRESS"):
        return environ["RAY_ADDRESS"], "RAY_ADDRESS"
    saved = saved_address_file(environ)
    try:
        text = saved.read_text().strip()
    except OSError:
        text = ""
    if text:
        return text, f"the address the last `ray start` here saved in {saved}"
    if address == "auto":
        raise LongCtxError("--ray-address auto: no Ray cluster was started on this machine (ray start --head), "
                           "and RAY_ADDRESS is not set")
    return None, "a new local cluster"


def check_reachable(address, source, timeout_s=CONNECT_S):
    """LongCtxError (naming `source`, where the address came from) unless a TCP connection to
    `address` opens within `timeout_s`."""
    _, host, port = split_address(address)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        hint = ("it was stopped without `ray stop`, or another cluster is meant: remove that file or give "
                "--ray-address" if source.startswith("the address the last") else "is it started? ray start --head")
        raise LongCtxError(f"cannot reach the Ray cluster at {address} ({source}): "
                           f"{exc.strerror or exc or 'timed out'}; {hint}") from None


def token_available(environ=None):
    """Whether a Ray authentication token is at hand: RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH
    names, or ~/.ray/auth_token."""
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_TOKEN"):
        return True
    path = environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return os.path.isfile(path)


def use_available_token(environ=None):
    """Set RAY_AUTH_MODE=token in `environ` (default: this process's) when it is unset and a
    token is available; returns whether token authentication is on."""
    environ = os.environ if environ is None else environ
    if "RAY_AUTH_MODE" not in environ and token_available(environ):
        environ["RAY_AUTH_MODE"] = "token"
    return environ.get("RAY_AUTH_MODE", "").lower() == "token"


def connect(ray, address, timeout_s):
    """Connect this driver to its Ray cluster (see the module docstring) unless it already is;
    LongCtxError (one line) when that cannot happen within `timeout_s`."""
    if ray.is_initialized():
        return
    if "RAY_AUTH_MODE" not in os.environ and use_available_token():
        _reload_ray_config(ray)
    target, source = resolve_address(address)
    if target is not None:
        check_reachable(target, source, min(CONNECT_S, timeout_s))
    shown = target or source
    deadline = time.monotonic() + timeout_s
    tries = CLIENT_TRIES if (target or "").startswith("ray://") else 1
    for attempt in range(1, tries + 1):
        error = _init_within(ray, target, shown, timeout_s, deadline - time.monotonic())
        if error is None:
            return
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        if CLIENT_START_FAILED not in first or attempt == tries or deadline - time.monotonic() <= 0:
            tried = f" ({attempt} tries)" if attempt > 1 else ""
            raise LongCtxError(f"cannot connect to the Ray cluster at {shown}{tried}: {first[:300]}") from None
        if ray.is_initialized():
            ray.shutdown()


def _init_within(ray, target, shown, timeout_s, left_s):
    """Run `ray.init(address=target)` in a helper thread for at most `left_s` seconds; returns
    the exception it raised (None when it connected); LongCtxError when it did not finish."""
    outcome = {}

    def init():
        try:
            ray.init(address=target, logging_level="warning")
        except BaseException as exc:  # reported by the waiting thread
            outcome["error"] = exc

    quiet = _Without("SIGTERM handler is not set")  # Ray's driver ends with its owner process anyway
    logging.getLogger("ray._private.worker").addFilter(quiet)  # the logger that says so
    worker = threading.Thread(target=init, name="longctx-ray-connect", daemon=True)
    worker.start()
    try:
        worker.join(max(left_s, 0.0))
    finally:
        logging.getLogger("ray._private.worker").removeFilter(quiet)
    if worker.is_alive():
        raise LongCtxError(f"could not join the Ray cluster at {shown} within {timeout_s:g} s (--timeout); "
                           "is it a Ray cluster, and does it need an authentication token (RAY_AUTH_MODE=token)?")
    return outcome.get("error")


def _reload_ray_config(ray):
    """Make an already imported Ray read RAY_AUTH_MODE again (it reads its settings once, at
    import; Ray's own `ray start` does the same when it turns token authentication on)."""
    from ray._raylet import Config

    Config.initialize("")


class _Without(logging.Filter):
    """Drops log records whose message starts with `prefix`."""

    def __init__(self, prefix):
        super().__init__()
        self.prefix = prefix

    def filter(self, record):
        return not record.getMessage().startswith(self.prefix)
