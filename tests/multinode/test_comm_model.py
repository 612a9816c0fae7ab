"""benchmarks/comm_model.py: the measured side of the link-model check (what counts as
communication in a collective seen from every rank), and the script end to end on a shaped
link between two namespaces (--smoke). No timing is asserted."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO
from longctx.simulate import Link
from netbed import unavailable

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
from comm_model import compare  # noqa: E402


def _op(kind, posted, wait, done, peers, nbytes=10**8, sent=10**8):
    return {"run": "m:1", "forward": 0, "layer": 0, "kind": kind, "model_kind": kind, "nbytes": nbytes, "sent": sent,
            "messages": 1, "peers": peers, "posted": posted, "wait": wait, "done": done}


def test_communication_counts_from_the_last_sender_and_the_wait_on():
    """Rank 1 joins the all-gather 0.1 s late: rank 0's wait for it is skew, not the link. In the
    posted exchange rank 0 computes 0.05 s after its peer posted: only the rest is exposed."""
    records = [[_op("all_gather", 0.0, 0.0, 0.3, [0, 1]), _op("exchange", 1.0, 1.2, 1.3, [1])],
               [_op("all_gather", 0.1, 0.1, 0.3, [0, 1]), _op("exchange", 1.15, 1.15, 1.3, [0])]]
    link = Link(gb_per_s=1.0, latency_us=0.0)
    (row,) = compare(records, {"full": link, "half": Link(gb_per_s=1.0, latency_us=0.0, duplex=False)}, layers=1)
    # all-gather: 0.2 s each; exchange: rank 0 from 1.2 (its wait) = 0.1, rank 1 from 1.15 = 0.15
    assert row["measured_ms_per_layer"] == pytest.approx(1e3 * (0.2 + (0.1 + 0.15) / 2))
    # modelled: all-gather 0.1 s full duplex; exchange 0.1 s minus the window (rank 0: 0.05, rank 1: 0)
    assert row["full_ms_per_layer"] == pytest.approx(1e3 * (0.1 + (0.05 + 0.1) / 2))
    assert row["half_ms_per_layer"] == pytest.approx(1e3 * (0.2 + (0.15 + 0.2) / 2))
    assert row["bytes_per_layer"] == 2 * 10**8


@pytest.mark.slow
def test_the_script_runs_on_a_shaped_link(tmp_path):
    reason = unavailable()
    if reason:
        pytest.skip(f"multi-node test bed: {reason}")
    out = tmp_path / "comm.json"
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "comm_model.py"), "--smoke", "--out",
                             str(out)], capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {row["method"] for row in report["rows"]} == {"ring", "allgather"}
    assert all(row["bytes_per_layer"] > 0 and row["measured_ms_per_layer"] > 0 for row in report["rows"]
               if row["forward"] == "prefill")
    assert report["calibration"]["latency_us"] > 0
    assert set(report["calibration"]["host_gb_per_s"]) == {"exchange", "all_gather", "all_to_all"}
    assert "timed directly" in report["measured"]
