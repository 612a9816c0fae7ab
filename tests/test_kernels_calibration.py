"""The per-device kernel calibration `auto` reads on CUDA (`longctx.kernels.calibration`), run on
the CPU with tiny shapes: the Triton kernel interpreted, the CPU op as the default, and cuDNN's
CUDA op as a candidate that fails here (so it must be recorded as failed and never win)."""

import dataclasses

import pytest
import torch

from longctx.kernels import calibration
from longctx.kernels.dispatch import CallShape, Choice, choose

pytest.importorskip("triton")


def test_calibration_measures_checks_saves_and_is_read_back(tmp_path):
    entries = calibration.calibrate_kernels(4, 2, 16, torch.float32, lengths=(72,), repeats=1,
                                            device=torch.device("cpu"),
                                            candidates=["default", "cuda-cudnn", "triton"])
    calls = {entry["call"] for entry in entries}
    assert calls == {"causal prefill", "ring step (full)", "ring diagonal step", "apb anchor rule", "query pass",
                     "decode"}
    assert len(entries) == len(calls)
    for entry in entries:
        assert set(entry["times_ms"]) == {"cpu-flash", "triton"}, entry  # both matched the reference first
        assert "cuda-cudnn" in entry["errors"] and entry["winner"] in ("cpu-flash", "triton")
    path = calibration.save_entries("Stand-in GPU", entries, {"dtype": "float32"}, tmp_path / "kernels.json")
    read = calibration._entries_by_name("Stand-in GPU", str(path))
    assert list(read) == entries and calibration._entries_by_name("Other GPU", str(path)) == ()
    prefill = next(entry for entry in entries if entry["call"] == "causal prefill")
    call = CallShape("cuda", (9, 0), torch.float32, 4, 2, 1000, 100000, 16, 16, True, False, False)
    assert calibration.shape_class(call) == prefill["class"]
    assert calibration.winner(read, call) == prefill["winner"]  # the one length measured
    want = Choice("triton") if prefill["winner"] == "triton" else Choice("fused", "cuda-efficient")
    assert choose("auto", call, read, triton_available=True) == want


def test_a_kernel_that_is_wrong_never_wins(monkeypatch):
    """A candidate that is fast but wrong on the class's shortest call is recorded as failed."""
    from longctx.kernels import fused

    real = fused.OPS["cpu-flash"]
    wrong = fused.FusedOp("cpu-flash", lambda q, k, v, causal, scale: (lambda out, lse: (out * 1.5, lse))(
        *real.call(q, k, v, causal, scale)), real.bottom_right, real.gqa_native)
    monkeypatch.setitem(fused.OPS, "cpu-flash", wrong)
    entries = calibration.calibrate_kernels(4, 2, 16, torch.float32, lengths=(32,), repeats=1,
                                            device=torch.device("cpu"), candidates=["default"])
    assert all("max abs error" in entry["errors"]["cpu-flash"] and "winner" not in entry for entry in entries)


def test_winner_matches_class_and_nearest_length():
    call = CallShape("cuda", (9, 0), torch.bfloat16, 32, 8, 4096, 8000, 128, 128, True, False, False)
    key = calibration.shape_class(call)
    assert key == "bfloat16/d128/g4/causal/fresh/prefill"
    entries = [{"class": key, "k_len": 4096, "winner": "triton"}, {"class": key, "k_len": 65536, "winner": "cuda-flash"},
               {"class": key.replace("fresh", "resumed"), "k_len": 16384, "winner": "cuda-cudnn"}]
    assert calibration.winner(entries, call) == "triton"  # 8000 keys: nearer 4096 than 65536 in log2
    assert calibration.winner(entries, dataclasses.replace(call, k_len=40000)) == "cuda-flash"
    assert calibration.winner(entries, dataclasses.replace(call, resume=True)) == "cuda-cudnn"
    assert calibration.winner([], call) is None
