"""Helpers shared by test modules (import them from here, never from another test module).

Paths are anchored at the repository root (`REPO`), never at the working directory.
"""

import os
import subprocess
import sys

import torch

from longctx.comm import Comm
from longctx.config import RunConfig
from longctx.engine import Engine, Request
from longctx.models import load_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")


def run_cli(*args, timeout=240, stdin=None):
    """`longctx *args` in a fresh interpreter (the repository and tests/ on its path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]))
    return subprocess.run([sys.executable, "-m", "longctx.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, input=stdin)


def dense_result(model_dir, doc_ids, query_ids, max_new_tokens=6):
    """Single-process dense engine result with hidden states (the exactness reference)."""
    model = load_model(model_dir, torch.device("cpu"), torch.float32)
    engine = Engine(model, Comm(), RunConfig(model=model_dir, method="dense", nproc=1), torch.device("cpu"))
    return engine.run(Request(doc_ids, query_ids, max_new_tokens, "dense", True))


def relative_error(result, reference):
    """Relative error of document + question final hidden states."""
    value = torch.cat([result["doc_hidden"], result["query_hidden"]])
    ref = torch.cat([reference["doc_hidden"], reference["query_hidden"]])
    return float((value - ref).norm() / ref.norm())
