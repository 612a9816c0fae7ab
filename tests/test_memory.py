"""The driver's per-worker memory estimate (`longctx.memory`): its weights term matches a real
model, and a request that does not fit is refused in one line naming the sizes and a worker
count that fits."""

import pytest
import torch

from longctx.config import RunConfig
from longctx.costmodel import ModelShape
from longctx.errors import LongCtxError
from longctx.memory import GIB, check_memory, host_bytes, needed_bytes, weight_bytes
from longctx.models import load_model
from longctx.registry import get_method


def test_weights_term_counts_the_real_parameters(tiny_model):
    model = load_model(tiny_model("llama-gqa4"), torch.device("cpu"), torch.float32)
    shape = ModelShape.from_config(model.config, 4)
    real = sum(param.numel() for param in model.parameters()) * 4
    assert weight_bytes(shape, model.config.vocab_size) == pytest.approx(real, rel=0.01)


def planned(method, doc_len, world, **options):
    planner = get_method(method, RunConfig(method=method, dtype="bfloat16", device="cuda", **options)).planner
    return planner, planner.plan(doc_len, 32, world)


def test_kv_cache_of_the_largest_share_and_the_appending_host():
    planner, plan = planned("ring", 100_000, 4, balance="equal")
    shape = planner.cost_model().shape  # Llama-3.1-8B in bfloat16
    parts = [host_bytes(shape, 128_256, plan, host, 10) for host in plan.hosts]
    per_token = 32 * 2 * 8 * 128 * 2
    assert parts[1]["kv_cache"] == 25_000 * per_token
    assert parts[plan.append_rank]["kv_cache"] == (25_000 + 32 + 10) * per_token
    assert all(14 * GIB < part["weights"] < 16 * GIB for part in parts)  # 8.0e9 parameters


def test_too_large_for_one_gpu_names_sizes_and_a_worker_count_that_fits():
    planner, plan = planned("ring", 400_000, 2, balance="equal")
    shape = planner.cost_model().shape
    _, four = planned("ring", 400_000, 4, balance="equal")
    budget = (needed_bytes(shape, 128_256, plan, 10, False) + needed_bytes(shape, 128_256, four, 10, False)) // 2
    with pytest.raises(LongCtxError) as caught:
        check_memory(planner, plan, 128_256, 10, "cuda", available=(budget, False))
    message = str(caught.value)
    assert "GiB per worker (weights" in message and "K/V cache" in message and "one GPU's usable" in message
    suggested = int(message.rsplit("--nproc ", 1)[1])
    assert 2 < suggested <= 4
    assert needed_bytes(shape, 128_256, planner.plan(400_000, 32, suggested), 10, False) <= budget
    assert needed_bytes(shape, 128_256, planner.plan(400_000, 32, suggested - 1), 10, False) > budget


def test_shared_cpu_memory_counts_every_local_worker():
    planner, plan = planned("burst", 50_000, 4)
    shape = planner.cost_model().shape
    need = needed_bytes(shape, 128_256, plan, 10, True)
    check_memory(planner, plan, 128_256, 10, "cpu", available=(need, True))
    with pytest.raises(LongCtxError, match=r"x 4 workers.*available on this machine"):
        check_memory(planner, plan, 128_256, 10, "cpu", available=(need - 1, True))
    with pytest.raises(LongCtxError, match="no worker count fits"):
        check_memory(planner, plan, 128_256, 10, "cpu", available=(GIB, True))


def test_generate_refuses_a_request_that_does_not_fit_before_any_worker_starts(tiny_model, tmp_path, monkeypatch,
                                                                                 capsys):
    """End to end through `longctx generate`: with this machine's memory made 1 MiB the request is
    refused in one line, exit status 2, and no process is ever started."""
    import multiprocessing.process

    from longctx.cli import main as cli_main

    def no_process(self):
        raise AssertionError(f"a process was started: {self}")

    monkeypatch.setattr("longctx.memory.available_bytes", lambda device: (2 ** 20, True))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", no_process)
    doc = tmp_path / "doc.txt"
    doc.write_text("the quick brown fox jumps over the lazy dog. " * 10)
    status = cli_main(["generate", "--model", tiny_model("llama"), "--method", "burst", "--nproc", "2",
                       "--doc", str(doc), "--question", "what jumps?", "--max-new-tokens", "2", "--json"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2 and captured.out == ""
    assert len(lines) == 1 and lines[0].startswith("longctx: error: the request needs an estimated"), lines
    assert "x 2 workers" in lines[0] and "more than the 0.0 GiB available on this machine" in lines[0]
