"""Which wait a collective gets: bounded by the Comm's timeout on gloo, stream-ordered on NCCL
(whose process-group timeout, watchdog and TORCH_NCCL_ASYNC_ERROR_HANDLING bound it instead,
keeping the CPU's run-ahead). Checked on the CPU by the path chosen: no GPU is needed."""

import os
from datetime import timedelta

import pytest
import torch.distributed as dist

import launch.worker as worker
from longctx.comm import Pending, ProcessGroupComm, bounded_waits_for
from longctx.config import RunConfig
from longctx.errors import CollectiveError


class RecordingWork:
    """A stand-in for a torch.distributed Work: records the arguments of each `wait`."""

    def __init__(self, error=None):
        self.calls, self.error = [], error

    def wait(self, *args):
        self.calls.append(args)
        if self.error:
            raise self.error
        return True


def test_gloo_waits_carry_the_timeout_and_fail_as_one_line():
    comm = ProcessGroupComm(timeout_s=7, bounded_waits=True)
    work = RecordingWork()
    Pending("result", [work], comm).wait()
    assert work.calls == [(timedelta(seconds=7),)]
    broken = RecordingWork(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.2]:4"))
    with pytest.raises(CollectiveError, match=r"^a collective on rank 0 failed within the 7 s timeout: .*"
                                              r"\(Connection closed by peer \[10.0.0.2\]:4\)$"):
        comm._wait(broken)


def test_nccl_waits_only_order_the_stream():
    comm = ProcessGroupComm(timeout_s=7, bounded_waits=False)
    works = [RecordingWork(), RecordingWork()]
    assert Pending(["a", "b"], works, comm).wait() == ["a", "b"]
    assert [work.calls for work in works] == [[()], [()]]  # work.wait(): no CPU-side timeout, no polling


def test_the_backend_decides():
    assert bounded_waits_for("gloo") and bounded_waits_for(None) and not bounded_waits_for("nccl")


@pytest.mark.parametrize("backend,bounded", [("gloo", True), ("nccl", False)])
def test_init_worker_picks_the_wait_and_nccls_async_error_handling(monkeypatch, backend, bounded):
    """init_worker on a two-rank job of `backend` (the process group itself replaced: no GPU)."""
    joined = {}
    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    monkeypatch.setattr(worker, "pick_dist_backend", lambda config, device, local_world: backend)
    monkeypatch.setattr(dist, "rendezvous", lambda *args, **kwargs: iter([(object(), 0, 2)]))
    monkeypatch.setattr(dist, "init_process_group", lambda name, **kwargs: joined.update(kwargs, backend=name))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    comm, _ = worker.init_worker(RunConfig(device="cpu", timeout_s=9), 0, 2)
    assert comm.bounded_waits is bounded and comm.timeout_s == 9
    assert joined["backend"] == backend and joined["timeout"] == timedelta(seconds=9)
    assert os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING") == (None if bounded else "1")


def test_a_users_nccl_error_handling_setting_stands(monkeypatch):
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
    monkeypatch.setattr(worker, "pick_dist_backend", lambda config, device, local_world: "nccl")
    monkeypatch.setattr(dist, "rendezvous", lambda *args, **kwargs: iter([(object(), 0, 2)]))
    monkeypatch.setattr(dist, "init_process_group", lambda name, **kwargs: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    worker.init_worker(RunConfig(device="cpu"), 0, 2)
    assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"
