"""The namespace test bed for the multi-node tests (netbed.py): one per test module, removed
at its end however the module ends; every test here is skipped, with the reason, where
namespaces cannot be made."""

import os
import sys

import pytest

from helpers import REPO, TESTS
from netbed import Bed, unavailable

MULTINODE = os.path.dirname(os.path.abspath(__file__))


def node_environment():
    """The base environment of every node's processes: this interpreter's bin first on PATH, the
    repository and the test helpers importable, one thread per worker."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=os.pathsep.join([REPO, TESTS, MULTINODE]), OMP_NUM_THREADS="1")
    for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "RAY_ADDRESS", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def bed():
    """Nodes "a" and "b" on a private bridge (netbed.Bed)."""
    reason = unavailable()
    if reason:
        pytest.skip(f"multi-node test bed: {reason}")
    with Bed(("a", "b"), env=node_environment()) as made:
        yield made
