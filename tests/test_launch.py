"""launch/: the process-group backend choice (multi-node torchrun jobs), the SPMD runner's
rank-0 encoding, and the layering (launch never imports the user-facing API; only the face
modules import launch)."""

import ast
import os

import pytest
import torch
import torch.distributed as dist

import launch.worker
from helpers import REPO
from launch.spmd import SPMDLongContextLM, torchrun_env
from launch.worker import init_worker, pick_dist_backend
from longctx.config import RunConfig
from longctx.engine import Request
from longctx.errors import LongCtxError

CUDA0 = torch.device("cuda", 0)


@pytest.fixture
def eight_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)


def test_backend_follows_the_local_worker_count(eight_gpus):
    config = RunConfig()
    assert pick_dist_backend(config, CUDA0, local_world=8) == "nccl"  # e.g. rank 9 of 16 on two nodes
    assert pick_dist_backend(config, CUDA0, local_world=9) == "gloo"  # two ranks share a GPU here
    assert pick_dist_backend(config, torch.device("cpu"), local_world=1) == "gloo"
    assert pick_dist_backend(RunConfig(dist_backend="gloo"), CUDA0, local_world=1) == "gloo"
    assert pick_dist_backend(RunConfig(dist_backend="nccl"), CUDA0, local_world=16) == "nccl"


def test_multi_node_torchrun_rank_joins_with_nccl(eight_gpus, monkeypatch):
    """Rank 9 of a 16-rank job on two 8-GPU nodes: torchrun's LOCAL_WORLD_SIZE (8), not the
    world size (16), decides; the rank's GPU is its local rank's."""
    joined, threads = {}, []
    monkeypatch.setattr(launch.worker, "resolve_device", lambda device, rank: torch.device("cuda", rank))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kwargs: joined.update(kwargs, backend=backend))
    monkeypatch.setattr(dist, "rendezvous", lambda *args, **kwargs: iter([(object(), 9, 16)]))  # no store host:
    monkeypatch.setattr(dist, "is_initialized", lambda: True)                                  # no interface probe
    env = {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8"}
    rank, world, local_rank, local_world = torchrun_env(env)
    assert (rank, world, local_rank, local_world) == (9, 16, 1, 8)
    comm, device = init_worker(RunConfig(device="cuda"), rank, world, local_rank=local_rank, local_world=local_world)
    assert joined["backend"] == "nccl" and joined["device_id"] == torch.device("cuda", 1) == device
    assert (joined["rank"], joined["world_size"], comm.rank, comm.world) == (9, 16, 9, 16)
    assert threads == [max(1, (os.cpu_count() or 1) // 8)]


def test_torchrun_env_defaults_to_one_local_process():
    assert torchrun_env({}) == (0, 1, 0, 1)
    assert torchrun_env({"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4, 3, 4)


class _Rank0Says:
    """Comm stand-in for a rank other than 0: broadcast_object returns rank 0's message."""

    def __init__(self, message):
        self.message = message

    def broadcast_object(self, obj, src=0):
        assert obj is None and src == 0  # this rank sends nothing
        return self.message


def _other_rank(message):
    lm = object.__new__(SPMDLongContextLM)
    lm.rank, lm.comm = 1, _Rank0Says(message)
    return lm


def _never():
    raise AssertionError("only rank 0 prepares a request")


def test_spmd_ranks_other_than_0_take_rank_0s_request():
    request = Request([1, 5, 6], [7])
    assert _other_rank(("ok", request))._from_rank0(_never) is request
    with pytest.raises(LongCtxError, match="the document is empty"):
        _other_rank(("error", "the document is empty"))._from_rank0(_never)


FACE = {"longctx/cli.py", "longctx/api.py", "longctx/demo.py", "longctx/compare.py"}


def _imports(path):
    """Every module `path` imports, at module level or inside functions."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def _python_files(*folders):
    for folder in folders:
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    yield os.path.relpath(path, REPO).replace(os.sep, "/"), path


def test_launch_never_imports_the_face():
    for relative, path in _python_files("launch"):
        bad = [name for name in _imports(path) if name in ("longctx.api", "longctx.cli")]
        assert not bad, f"{relative} imports {bad}"


def test_only_the_face_imports_launch():
    for relative, path in _python_files("longctx", "burst", "apb", "spava"):
        if relative in FACE or relative.startswith("longctx/eval/"):
            continue
        bad = [name for name in _imports(path) if name == "launch" or name.startswith("launch.")]
        assert not bad, f"{relative} imports {bad}"


class FinishedProcess:
    """Stands for a worker process in the local launcher's failure path: alive, or ended with
    `exitcode` (negative: killed by that signal)."""

    def __init__(self, exitcode=None):
        self.exitcode = exitcode

    def is_alive(self):
        return self.exitcode is None

    def kill(self):
        self.exitcode = -9

    def join(self, timeout=None):
        pass


def pool_with_reports(reports, exitcodes):
    """A LocalLauncher of len(reports) workers whose pipes already hold `reports` (one message or
    None per rank, rank order); a rank with an exit code has ended and closed its pipe."""
    import multiprocessing

    from launch.local import LocalLauncher

    pool = object.__new__(LocalLauncher)
    pool.world, pool._store, pool._conns, pool._procs = len(reports), None, [], []
    pool.worker_ends = []  # a live worker's end of its pipe stays open
    for report, exitcode in zip(reports, exitcodes):
        parent, child = multiprocessing.Pipe()
        if report is not None:
            child.send(report)
        if exitcode is not None:
            child.close()
        else:
            pool.worker_ends.append(child)
        pool._conns.append(parent)
        pool._procs.append(FinishedProcess(exitcode))
    return pool


@pytest.mark.parametrize("reports,exitcodes,message", [
    ([("collective-error", "CollectiveError: a collective on rank 0 failed"), ("error", "RuntimeError: injected")],
     [None, 1], "worker 1 failed: RuntimeError: injected"),
    ([("collective-error", "CollectiveError: a collective on rank 0 failed"), None],
     [None, -9], "worker 1 was killed by signal SIGKILL"),
    ([("collective-error", "CollectiveError: a collective on rank 0 failed"), None],
     [None, None], r"worker 1 stopped answering \(hung\?\): .*\(worker 0: CollectiveError"),
    ([("collective-error", "CollectiveError: a collective on rank 0 failed"),
      ("collective-error", "CollectiveError: a collective on rank 1 failed")],
     [None, None], "worker 0 failed: CollectiveError"),
])
def test_a_broken_collective_names_the_worker_that_broke_it(reports, exitcodes, message):
    """Rank 0's collective broke because rank 1 failed, and rank 0's report is read first: the
    error names rank 1's own failure (found in CI: the raising worker's message was lost); a
    rank 1 still running that sends nothing within the grace time is named as hung, with the
    collective that timed out; when every worker reports a broken collective, the first is named."""
    from launch.local import WorkerError
    from launch.replies import run_to_end

    pool = pool_with_reports(reports, exitcodes)
    with pytest.raises(WorkerError, match=f"^{message}"):
        run_to_end(pool._collect("ok"))
    assert pool._procs == []
