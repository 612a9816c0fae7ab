"""A Ray cluster across two machines (network namespaces, netbed.py): the head in node A, a worker
node in B, the driver in A, every node's host name on 127.0.1.1 locally, token authentication
on (RAY_AUTH_MODE=token and a token in ~/.ray, as the README says), CPU and gloo.

Checked, each with the README's commands: `longctx generate --launcher ray --placement spread`
places a worker on each node and answers as one process does (its driver has a bogus
GLOO_SOCKET_IFNAME, which must not reach the workers, and no RAY_AUTH_MODE: the saved token is
found); `ray job submit --working-dir .` with a relative model path (each node opens its own
copy of the shipped directory); a `ray://` address (Ray Client: the answer is printed whole);
B's raylet killed while a worker on B is inside a request: one error naming node B, and no
actor, placement group or worker process left.

The nodes' `ray start` run with `--block` and are stopped by signal, never by `ray stop`
(which stops every Ray process of the machine, another node's or another test's included);
each node has its own RAY_TMPDIR (`Node.tmp`: Ray puts a worker node's session directory at the
head's path, so on one file system the nodes would share it). Measured on the shared 2-core machine: about 2.5 minutes.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from helpers import REPO, dense_result
from longctx.models import check_model_dir, load_tokenizer
from longctx.models.family import encode_prompt
from longctx.request import stop_ids

MODEL = "examples/models/needle-llama"  # relative: resolved or shipped, never each node's own guess
DOC = "examples/data/haystack.txt"
QUESTION = ("What is the special magic number for date mentioned in the provided text? Answer: The special magic "
            "number for date is")
INJECT = os.path.join(REPO, "tests", "faults", "inject")
CPUS_PER_NODE = 2
CLEANUP_S = 60


@pytest.fixture(scope="module")
def cluster(bed):
    """`ray start --head` in node A and `ray start --address` in node B (token authentication on),
    both with --block; returns the bed. Stopped by SIGTERM when the module ends."""
    pytest.importorskip("ray", reason="the Ray tests need the ray extra (pip install -e '.[ray]')")
    home = tempfile.mkdtemp(prefix="lc-ray-home-")  # shared, as a cluster's home directories often are
    for node in bed.nodes.values():
        node.env.update(HOME=home, RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=node.tmp)
    made = bed["a"].run(["ray", "get-auth-token", "--generate"])
    assert made.returncode == 0, made.stderr
    common = ["--block", f"--num-cpus={CPUS_PER_NODE}", "--num-gpus=0", "--object-store-memory=100000000",
              "--disable-usage-stats"]
    head_ip = bed["a"].address
    starts = [
        bed["a"].popen(["ray", "start", "--head", "--port=6379", "--dashboard-port=8265", "--dashboard-host=0.0.0.0",
                        f"--node-ip-address={head_ip}", *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        None]
    try:
        _wait_for_nodes(bed, 1)
        starts[1] = bed["b"].popen(["ray", "start", f"--address={head_ip}:6379", f"--node-ip-address={bed['b'].address}",
                                    *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_nodes(bed, 2)
        yield bed
    finally:
        for start in starts:
            if start is not None:
                start.send_signal(signal.SIGTERM)
        for start in starts:
            if start is not None:
                try:
                    start.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    start.kill()
        for node in bed.nodes.values():
            node.kill_all()
        shutil.rmtree(home, ignore_errors=True)


STATE = textwrap.dedent("""
    import json, sys
    from ray.util.state import list_actors, list_nodes, list_placement_groups
    address = sys.argv[1]
    print(json.dumps({
        "nodes": sorted(node.node_ip for node in list_nodes(address=address) if node.state == "ALIVE"),
        "actors": [actor.state for actor in list_actors(address=address, filters=[("class_name", "=", "RankActor")])
                   if actor.state != "DEAD"],
        "groups": [group.state for group in list_placement_groups(address=address) if group.state != "REMOVED"]}))
""")


def cluster_state(bed):
    """{nodes: alive node IPs, actors: RankActors not dead, groups: placement groups not removed},
    asked from node A through Ray's state API."""
    out = bed["a"].run([sys.executable, "-c", STATE, f"{bed['a'].address}:6379"], timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wait_for_nodes(bed, count, timeout=180):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if len(cluster_state(bed)["nodes"]) == count:
                return
        except AssertionError:  # the head is not answering yet
            pass
        assert time.monotonic() < deadline, f"the Ray cluster did not reach {count} nodes"
        time.sleep(2)


def _actor_pids(node):
    """PIDs of the node's RankActor processes (Ray titles them ray::RankActor...)."""
    found = []
    for pid in node.pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"ray::RankActor" in handle.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def assert_nothing_left(bed):
    """No RankActor alive, no placement group, no RankActor process on any node."""
    deadline = time.monotonic() + CLEANUP_S
    while True:
        state = cluster_state(bed)
        left = [pid for node in bed.nodes.values() for pid in _actor_pids(node)]
        if (not state["actors"] and not state["groups"] and not left) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert state["actors"] == [] and state["groups"] == [] and left == []


def generate(*extra):
    """`longctx generate` on the shipped model and haystack (the README's Ray command)."""
    return ["longctx", "generate", "--launcher", "ray", "--model", MODEL, "--method", "burst", "--nproc", "2",
            "--doc", DOC, "--question", QUESTION, "--max-new-tokens", "3", *extra]


def _reference_tokens():
    """One process's dense answer to the same prompt, up to the end-of-text token `generate` stops at."""
    path = os.path.join(REPO, MODEL)
    tokenizer = load_tokenizer(path)
    doc_ids, query_ids = encode_prompt(tokenizer, open(os.path.join(REPO, DOC)).read(), QUESTION)
    tokens = dense_result(path, doc_ids, query_ids, max_new_tokens=3).tokens
    stops = set(stop_ids(tokenizer, check_model_dir(path)))
    end = next((index + 1 for index, token in enumerate(tokens) if token in stops), len(tokens))
    return tokens[:end]


def _answer(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("{") and '"answer"' in line]
    assert len(lines) == 1, stdout[-3000:]
    return json.loads(lines[0])


def _spread_line(bed, stderr):
    """The driver's placement line must name one worker on each node."""
    pattern = (rf"2 Ray workers on 2 nodes: nodea \({re.escape(bed['a'].address)}\): rank 0; "
               rf"nodeb \({re.escape(bed['b'].address)}\): rank 1")
    assert re.search(pattern, stderr), stderr[-3000:]


def test_generate_spreads_over_both_nodes_and_answers_as_one_process(cluster):
    env = {"GLOO_SOCKET_IFNAME": "longctx-none0"}  # the driver machine's choice: not the workers'
    driver_env = {key: value for key, value in cluster["a"].env.items() if key != "RAY_AUTH_MODE"}
    out = subprocess.run(cluster["a"].command(generate("--ray-address", "auto", "--placement", "spread", "--json")),
                         capture_output=True, text=True, timeout=300, cwd=REPO, env={**driver_env, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    _spread_line(cluster, out.stderr)
    payload = _answer(out.stdout)
    assert payload["answer"].strip() == "42" and payload["tokens"] == _reference_tokens()
    assert_nothing_left(cluster)


def test_ray_job_submit_ships_the_relative_model_to_every_node(cluster):
    command = ["ray", "job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", ".", "--",
               *generate("--placement", "spread", "--json")]
    out = cluster["a"].run(command, timeout=400, cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _spread_line(cluster, out.stdout + out.stderr)  # the job's output comes back on stdout
    assert _answer(out.stdout)["tokens"] == _reference_tokens()
    assert_nothing_left(cluster)


def test_a_ray_client_address_prints_the_whole_answer(cluster):
    out = cluster["a"].run(generate("--ray-address", f"ray://{cluster['a'].address}:10001", "--placement", "spread"), timeout=300,
                           cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "answer: 42" in out.stdout
    assert_nothing_left(cluster)


RAYLET_KILL_DRIVER = textwrap.dedent("""
    import sys, time
    from longctx.api import LongContextLM
    from longctx.errors import LongCtxError
    lm = LongContextLM(sys.argv[1], method="burst", nproc=2, launcher="ray", ray_address="auto", placement="spread",
                       timeout_s=120, worker_env={"PYTHONPATH": sys.argv[2], "LONGCTX_FAULT": "hang:query:1"})
    try:
        lm.run_ids(list(range(5, 300)), [7, 8, 9], max_new_tokens=3)
    except LongCtxError as exc:
        print("driver error:", exc, flush=True)
""")


def _hanging(pid):
    dump = subprocess.run([os.path.join(os.path.dirname(sys.executable), "py-spy"), "dump", "--pid", str(pid)],
                          capture_output=True, text=True)
    return "_fail" in dump.stdout


def _raylet_pid(node):
    for pid in node.pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if handle.read().split(b"\0")[0].endswith(b"/raylet"):
                    return pid
        except OSError:
            pass
    return None


def test_node_b_raylet_killed_mid_request_is_one_error_naming_it(cluster):
    """Last in the module: node B leaves the cluster."""
    paths = os.pathsep.join([INJECT, cluster["a"].env["PYTHONPATH"]])
    driver = cluster["a"].popen([sys.executable, "-c", RAYLET_KILL_DRIVER, os.path.join(REPO, MODEL), paths],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 240
        while not any(_hanging(pid) for pid in _actor_pids(cluster["b"])):  # rank 1, on B, is in the query pass
            assert time.monotonic() < deadline and driver.poll() is None, driver.communicate()[1][-3000:]
            time.sleep(0.5)
        os.kill(_raylet_pid(cluster["b"]), signal.SIGKILL)
        killed_at = time.monotonic()
        out, err = driver.communicate(timeout=200)
        elapsed = time.monotonic() - killed_at
    finally:
        driver.kill()
    reported = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("driver error: ")]
    assert len(reported) == 1, out[-3000:] + err[-3000:]
    message = reported[0]
    print(f"node b's raylet killed: the driver's error {elapsed:.1f} s later: {message}")
    assert "nodeb" in message and cluster["b"].address in message and "all workers were stopped" in message
    assert elapsed < 60  # the collective timeout is 120 s: the loss is seen, not waited out
    assert_nothing_left(cluster)
