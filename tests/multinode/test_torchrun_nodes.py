"""torchrun across two machines (network namespaces, netbed.py): `--nnodes 2 --nproc-per-node 2`,
c10d rendezvous on node A's host name, whose own /etc/hosts maps it to 127.0.1.1 as a default
Debian install does, CPU and gloo.

Checked: every exact method of a 4-rank job spanning both nodes equals the single-process dense
run, and APB equals APB on 4 workers of one machine with the same plan (one job runs all
methods, `spmd_probe.py`); node B killed while rank 3 (on B) is inside a request ends the job
on node A within seconds, long before the collective timeout, with one error line on A, and
leaves no process on either node. Before longctx bound gloo to the route to rank 0, the first
of these failed at once on B ("connect ... [127.0.1.1]: Connection refused").

Measured on the shared 2-core machine: about 35 s for the module.
"""

import itertools
import os
import subprocess
import sys
import time
import uuid

import torch

from helpers import dense_result, relative_error, run_workers
from longctx.config import RunConfig
from longctx.engine import Request
from longctx.models import load_model

EXACT = ("burst", "ring", "allgather", "ulysses")
TOLERANCE = 1e-4  # relative error of the final hidden states against dense (fp32)
APB_TOLERANCE = 1e-5  # the same computation in 4 processes or 4 threads
INJECT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "faults", "inject")
_ports = itertools.count(29500)


def torchrun(entry, run_id, port):
    """The torchrun command every node runs: 2 nodes x 2 ranks, rendezvous at node A."""
    return ["torchrun", "--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"nodea:{port}", "--rdzv-id", run_id, "--rdzv-conf", "join_timeout=120", *entry]


def start_job(bed, entry, env=None):
    """Start the same torchrun command on nodes a and b; returns their processes."""
    command = torchrun(entry, uuid.uuid4().hex[:12], next(_ports))
    return {name: bed[name].popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in ("a", "b")}


def finish(procs, timeout=240):
    """(returncode, stdout, stderr) of each node's torchrun, by node name."""
    return {name: (proc.wait(timeout=timeout), *proc.communicate()) for name, proc in procs.items()}


def test_every_method_across_two_nodes_equals_its_single_machine_reference(bed, tiny_model, tmp_path):
    path = tiny_model("llama-mha")  # 4 heads: ulysses on 4 ranks
    out = tmp_path / "results.pt"
    entry = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "spmd_probe.py"), "--model", path, "--methods", ",".join((*EXACT, "apb")), "--out", str(out)]
    ended = finish(start_job(bed, entry))
    for name, (code, _, err) in ended.items():
        assert code == 0, f"node {name}:\n{err[-3000:]}"
    saved = torch.load(out, weights_only=False)
    doc, query, results = saved["doc_ids"], saved["query_ids"], saved["results"]
    reference = dense_result(path, doc, query, max_new_tokens=4)
    for method in EXACT:
        assert results[method].nproc == 4
        assert results[method].tokens == reference.tokens, method
        assert relative_error(results[method], reference) <= TOLERANCE, method
    model = load_model(path, torch.device("cpu"), torch.float32)
    local_apb = run_workers(model, RunConfig(model=path, method="apb", nproc=4),
                            Request(doc, query, 4, "apb", return_hidden=True), 4)
    assert results["apb"].plan == local_apb.plan
    assert results["apb"].tokens == local_apb.tokens
    assert relative_error(results["apb"], local_apb) <= APB_TOLERANCE
    assert bed["a"].pids() == [] and bed["b"].pids() == []


def _rank_pid(node, rank):
    """PID of the torchrun worker of global `rank` on `node` (its environment holds RANK=rank)."""
    for pid in node.pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"TORCHELASTIC_RUN_ID" in b" ".join(environ):
            return pid
    return None


def _hanging(pid):
    """Whether the process's Python stack is inside the injected hang (py-spy, from Ray's extra)."""
    dump = subprocess.run([os.path.join(os.path.dirname(sys.executable), "py-spy"), "dump", "--pid", str(pid)], capture_output=True, text=True)
    return "_fail" in dump.stdout


def test_a_node_killed_mid_request_ends_the_job_on_both_nodes(bed, tiny_model, tmp_path):
    timeout_s = 120
    doc = tmp_path / "doc.txt"
    doc.write_text("Numbers: " + " ".join(str(i) for i in range(150)))
    entry = ["-m", "launch.torchrun", "--model", tiny_model("llama"), "--method", "burst", "--doc", str(doc),
             "--question", "Next?", "--max-new-tokens", "3", "--timeout", str(timeout_s)]
    env = {"PYTHONPATH": os.pathsep.join([INJECT, bed["a"].env["PYTHONPATH"]]), "LONGCTX_FAULT": "hang:decode:3"}
    procs = start_job(bed, entry, env)
    deadline = time.monotonic() + 180
    while not ((pid := _rank_pid(bed["b"], 3)) and _hanging(pid)):  # rank 3, on B, is inside the request
        assert time.monotonic() < deadline and procs["a"].poll() is None, "rank 3 never reached decoding"
        time.sleep(0.5)
    bed["b"].kill_all()
    killed_at = time.monotonic()
    code, _, err = finish(procs)["a"]
    elapsed = time.monotonic() - killed_at
    lines = [line for line in err.splitlines() if line.startswith("longctx: error")]
    assert code != 0
    assert elapsed < timeout_s / 2, elapsed  # the peer's death is seen, not waited out
    assert len(lines) == 1 and "on nodea, 10.231." in lines[0], err[-3000:]
    print(f"node b killed mid-request: node a ended {elapsed:.1f} s later: {lines[0]}")
    deadline = time.monotonic() + 15
    while (bed["a"].pids() or bed["b"].pids()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert bed["a"].pids() == [] and bed["b"].pids() == []
