"""Driver for tests/test_interrupt_startup.py: starts local worker pools and sends its own
process group SIGINT (what a terminal's Ctrl-C does) after each given delay; prints one line per
try, "during" (start-up raised KeyboardInterrupt), "after" (the pool was up first, and the
signal then arrived as KeyboardInterrupt) or "lost" (it never arrived), then "left N" (worker
processes still alive). Run as: interrupt_driver.py MODEL_DIR NPROC DELAY,DELAY,..."""

import multiprocessing
import os
import signal
import sys
import threading
import time

from launch.local import LocalLauncher
from longctx.config import RunConfig


def children():
    """PIDs of this process's live children (worker processes; not multiprocessing's resource
    tracker, which lives as long as this process)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(os.getpid()) and fields[0] != "Z":
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if b"resource_tracker" not in handle.read():
                    found.append(int(entry))
    return found


def main():
    model, nproc, delays = sys.argv[1], int(sys.argv[2]), [float(d) for d in sys.argv[3].split(",")]
    config = RunConfig(model=model, method="burst", nproc=nproc, device="cpu", threads=1).validate()
    for delay in delays:
        timer = threading.Timer(delay, os.killpg, (0, signal.SIGINT))
        launcher = None
        try:
            timer.start()
            launcher = LocalLauncher(config)
            timer.join()
            time.sleep(1.0)  # the signal has been sent: it must arrive by now
            outcome = "lost"
        except KeyboardInterrupt:
            outcome = "after" if launcher is not None else "during"
        timer.join()
        if launcher is not None:
            launcher.abort()
        multiprocessing.active_children()  # reap
        time.sleep(0.2)
        print(outcome, flush=True)
    print(f"left {len(children())}", flush=True)


if __name__ == "__main__":
    main()
