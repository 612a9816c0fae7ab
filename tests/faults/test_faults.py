"""Fault injection: a worker killed, raising or hanging at each phase ends the job with one clear
error within the collective timeout, and leaves no process behind.

Faults are injected from outside longctx: `inject/sitecustomize.py` runs at start-up in every
process of the job (PYTHONPATH) and wraps model loading and the per-layer attention dispatch when
`LONGCTX_FAULT=KIND:PHASE:RANK` is set; the failing worker writes the file `LONGCTX_FAULT_REACHED`
just before it fails, so a test waits for the fault (never sleeps) and knows the job failed
because of it. The error must name the failing worker and the cause. Every process of a job
carries a unique `LONGCTX_FAULT_RUN` marker in its environment; after the job the process table
must hold none.
"""

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from helpers import REPO, TESTS, assert_none_left, default_sigint, marked_processes

INJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inject")
KINDS = ("kill", "raise", "hang")
PHASES = ("load", "prefill-first", "prefill-middle", "query", "decode")
TIMEOUT_S = 8  # the collective timeout given to the job (--timeout)
START_SLACK_S = 60  # process start-up and model loading on a loaded 2-core machine
FAULT_SLACK_S = 30  # from a fault to the job's exit, beyond the collective timeout: notice, report, stop


# what the one error line says of worker 1 for each kind of fault (local launcher)
CAUSES = {"kill": "worker 1 was killed by signal SIGKILL", "raise": "worker 1 failed: RuntimeError: injected fault",
          "hang": "worker 1 stopped answering"}


def job_env(fault, marker, reached=None):
    """Environment of a job: fault injection first on the path, the marker, the fault and the file
    the failing worker writes when it reaches the fault."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([INJECT, REPO, TESTS]), LONGCTX_FAULT_RUN=marker)
    if fault:
        env["LONGCTX_FAULT"] = fault
    if reached:
        env["LONGCTX_FAULT_REACHED"] = reached
    return env


def wait_for(path, timeout_s=START_SLACK_S):
    """Wait until the fault injector has written `path` (the fault was reached); fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"the fault was not reached within {timeout_s} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def job_files(tiny_model, tmp_path_factory):
    """(model dir, document file) of the fault jobs."""
    doc = tmp_path_factory.mktemp("fault-doc") / "doc.txt"
    doc.write_text("Numbers: " + " ".join(str(i) for i in range(150)))
    return tiny_model("llama"), str(doc)


def local_job(job_files, timeout_s=TIMEOUT_S):
    """The CLI's `generate` on 2 local workers."""
    model, doc = job_files
    command = [sys.executable, "-m", "longctx.cli", "generate", "--model", model, "--method", "burst",
               "--nproc", "2", "--doc", doc, "--question", "Next?", "--max-new-tokens", "3",
               "--timeout", str(timeout_s)]
    return command


def torchrun_job(job_files, log_dir):
    """The torchrun entry on 2 ranks (rendezvous on a port torchrun picks), each rank's output
    redirected to files under `log_dir`."""
    model, doc = job_files
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    return [torchrun, "--standalone", "--nproc-per-node", "2", "--log-dir", log_dir, "--redirects", "3",
            "-m", "launch.torchrun", "--model", model, "--method", "burst", "--doc", doc, "--question", "Next?",
            "--max-new-tokens", "3", "--timeout", str(TIMEOUT_S)]


def run_job(command, fault, tmp_path):
    """Run the job with `fault`; returns (completed process, seconds from the fault to the job's
    exit: None without a fault). The fault must have been reached, and no process may be left."""
    marker, reached = uuid.uuid4().hex, str(tmp_path / "fault-reached")
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=job_env(fault, marker, reached),
                          timeout=TIMEOUT_S + START_SLACK_S + 60)
    ended = time.time()
    assert_none_left(marker)
    if not fault:
        return proc, None
    assert os.path.exists(reached), f"the job failed before the fault was reached:\n{proc.stderr[-3000:]}"
    return proc, ended - os.path.getmtime(reached)


def test_without_a_fault_the_job_answers(job_files, tmp_path):
    proc, _ = run_job(local_job(job_files), None, tmp_path)
    assert proc.returncode == 0 and "answer:" in proc.stdout, proc.stderr


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("kind", KINDS)
def test_local_launcher_fault(job_files, kind, phase, tmp_path):
    """One line naming worker 1 and what happened to it; for a hang, also the collective that
    timed out waiting for it."""
    proc, after_fault = run_job(local_job(job_files), f"{kind}:{phase}:1", tmp_path)
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith(f"longctx: error: {CAUSES[kind]}"), proc.stderr
    if kind == "hang":
        assert f"failed within the {TIMEOUT_S} s timeout" in lines[0], lines[0]
    assert after_fault < TIMEOUT_S + FAULT_SLACK_S, after_fault  # within the collective timeout, not hanging
    print(f"FAULT local {kind} {phase}: exit {after_fault:.1f} s after the fault: {lines[0]}")


def torchrun_failures(stderr):
    """{rank: exit code} of the failures in torchrun's summary."""
    found = re.findall(r"rank\s*: (\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*: (-?\d+)", stderr)
    return {int(rank): int(code) for rank, code in found}


@pytest.mark.slow
@pytest.mark.parametrize("kind,phase", [("kill", "prefill-middle"), ("raise", "decode"), ("hang", "load")])
def test_torchrun_entry_fault(job_files, kind, phase, tmp_path):
    """Each rank's own output (redirected to files by torchrun) is at most one line, no
    traceback; the failing rank and the cause are named: by rank 1 itself when it raises, by
    torchrun's summary (signal) when it is killed, by rank 0's timed-out collective when it
    hangs. torchrun's own failure report (its ChildFailedError) is torchrun's, not checked.
    One phase per kind (the local launcher runs the whole matrix); figures in docs/reliability.md."""
    log_dir = tmp_path / "logs"
    proc, after_fault = run_job(torchrun_job(job_files, str(log_dir)), f"{kind}:{phase}:1", tmp_path)
    assert proc.returncode != 0
    assert after_fault < TIMEOUT_S + FAULT_SLACK_S, after_fault
    ranks = {}
    for rank in (0, 1):
        (path,) = glob.glob(str(log_dir / "**" / "attempt_0" / str(rank) / "stderr.log"), recursive=True)
        with open(path) as handle:
            ranks[rank] = [line for line in handle.read().splitlines() if line.strip()]
        assert len(ranks[rank]) <= 1 and not any("Traceback" in line for line in ranks[rank]), ranks[rank]
    failures = torchrun_failures(proc.stderr)
    if kind == "kill":
        assert failures[1] == -9, proc.stderr[-3000:]
    elif kind == "raise":
        assert len(ranks[1]) == 1, ranks[1]
        assert re.match(r"longctx: error \(rank 1 on [^,]+, [^)]+\): RuntimeError: injected fault \(at sitecustomize\.py:",
                        ranks[1][0]), ranks[1]
        assert failures[1] == 1
    else:
        assert re.match(r"longctx: error \(rank 0 on [^,]+, [^)]+\): a collective on rank 0 failed "
                        rf"within the {TIMEOUT_S} s timeout", ranks[0][0]), ranks[0]
        assert failures[0] == 1 and ranks[1] == []
    print(f"FAULT torchrun {kind} {phase}: exit {after_fault:.1f} s after the fault: {ranks}")


def test_ctrl_c_on_the_driver_during_prefill_leaves_no_worker(job_files, tmp_path):
    """SIGINT while a worker hangs in prefill: one line, non-zero exit, every worker gone."""
    marker, reached = uuid.uuid4().hex, str(tmp_path / "fault-reached")
    fault = "hang:prefill-first:1"
    proc = subprocess.Popen(local_job(job_files, timeout_s=300), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=job_env(fault, marker, reached),
                            preexec_fn=default_sigint)
    wait_for(reached)
    assert len(marked_processes(marker)) == 3  # the driver and both workers, one of them hanging
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    print(f"FAULT local SIGINT prefill: {time.monotonic() - started:.1f} s to exit")
    assert_none_left(marker)
    lines = [line for line in stderr.strip().splitlines() if line]
    assert proc.returncode != 0 and len(lines) == 1, stderr


def test_a_failed_pool_says_so_on_the_next_call(job_files, monkeypatch):
    """After a worker fails, the next request on the same LongContextLM is refused at once."""
    from longctx.api import LongContextLM
    from longctx.errors import LongCtxError, WorkerError

    marker = uuid.uuid4().hex
    for key, value in job_env("raise:prefill-first:1", marker).items():
        monkeypatch.setenv(key, value)
    model, _ = job_files
    lm = LongContextLM(model, method="burst", nproc=2, timeout_s=TIMEOUT_S)
    try:
        with pytest.raises(WorkerError, match="^worker 1 failed: RuntimeError: injected fault"):
            lm.run_ids([5] * 100, [6, 7], max_new_tokens=2)
        assert_none_left(marker)  # every worker is gone: the next call cannot be waiting on one
        with pytest.raises(LongCtxError, match="shut down"):
            lm.run_ids([5] * 100, [6, 7], max_new_tokens=2)
    finally:
        lm.close()


def test_a_killed_driver_takes_its_workers_with_it(job_files, tmp_path):
    """SIGKILL on the driver (it cannot clean up) while a worker hangs in prefill: the workers
    notice their driver is gone and exit."""
    marker, reached = uuid.uuid4().hex, str(tmp_path / "fault-reached")
    fault = "hang:prefill-first:1"
    proc = subprocess.Popen(local_job(job_files, timeout_s=300), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO, env=job_env(fault, marker, reached))
    wait_for(reached)
    assert len(marked_processes(marker)) == 3  # the driver and both workers, one of them hanging
    proc.kill()
    proc.wait(timeout=30)
    assert_none_left(marker, grace_s=60)  # a worker still importing torch notices once it starts serving
