"""Ctrl-C during worker start-up stops it: never lost, no worker left (issue: the local launcher
ignored SIGINT while it spawned, and one try in eleven finished the request instead).

A driver process in a session of its own sends its process group SIGINT (as a terminal's Ctrl-C
does, the workers included) at random points of start-up: most within the first 80 ms (the
spawn of 4 workers, where the signal used to be lost), the rest while the workers import torch
and load the model. Bounded: 6 tries, about 20 s on 2 cores. The delays are printed."""

import os
import random
import subprocess
import sys

from helpers import REPO, TESTS


def test_sigint_at_random_points_of_start_up_is_never_lost(tiny_model):
    rng = random.Random()
    delays = [round(rng.uniform(0.0, 0.08), 3) for _ in range(4)] + [round(rng.uniform(0.1, 2.5), 3) for _ in range(2)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    proc = subprocess.run([sys.executable, os.path.join(TESTS, "interrupt_driver.py"), tiny_model("llama"), "4",
                           ",".join(map(str, delays))], capture_output=True, text=True, timeout=300, env=env,
                          start_new_session=True)
    assert proc.returncode == 0, (delays, proc.stderr[-3000:])
    lines = proc.stdout.split()
    outcomes, left = lines[:-2], lines[-2:]
    assert "lost" not in outcomes and len(outcomes) == len(delays), (delays, outcomes)
    assert left == ["left", "0"], (delays, proc.stdout)
