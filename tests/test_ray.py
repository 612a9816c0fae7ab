"""The Ray launcher (launch/ray.py) on a real local Ray cluster.

The module starts one cluster (`ray start --head --block` on loopback, 4 CPUs, a 100 MB object
store, its own temp dir) and stops it by signalling that process at the end; every test that
needs Ray shares it. Tiny random-weight models, CPU, gloo. Checked: the same tokens as the
local launcher for burst, ulysses and apb on 2 and 4 actors (burst and ulysses also the same
hidden states); warm actors across requests; the placement group freed on exit; a request for
more workers than the cluster has, or than it has free; an actor killed during a request; Ctrl-C
on a driver; `ray job submit ... -- longctx generate --launcher ray`.

Measured on the 2-core machine: about 2 minutes for the module (the cluster starts in 6-10 s;
the 2-actor comparison 20-25 s, the job submission 20-25 s, Ctrl-C 12 s, the killed actor 8-10 s;
the 4-actor comparison, 30-60 s, is marked slow).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from dataclasses import dataclass

import pytest
import torch

from helpers import REPO, default_sigint, dense_result
from launch.ray import Slot, assign_slots, check_reachable, dist_environment, missing_resources, worker_bundle
from longctx.api import LongContextLM
from longctx.compare import random_prompt
from longctx.engine import Request
from longctx.errors import LongCtxError, WorkerError
from longctx.models import load_tokenizer
from longctx.models.family import encode_prompt

CLUSTER_CPUS = 4
BIN = os.path.dirname(sys.executable)
METHODS = ("burst", "ulysses", "apb")
EXACT = ("burst", "ulysses")
HIDDEN_TOLERANCE = 1e-5
CLEANUP_S = 60  # bound on waiting for Ray to report killed actors and removed groups


# --- pure helpers: no cluster -------------------------------------------------------------

def test_ranks_go_by_node_then_gpu_with_local_ranks_and_visibility_per_node():
    infos = [{"node_id": "nb", "ip": "10.0.0.10", "gpus": ["1"]},
             {"node_id": "na", "ip": "10.0.0.2", "gpus": ["3"]},
             {"node_id": "na", "ip": "10.0.0.2", "gpus": ["0"]},
             {"node_id": "nb", "ip": "10.0.0.10", "gpus": ["0"]}]
    assert assign_slots(infos) == [Slot(3, 4, 1, 2, ("0", "1")), Slot(1, 4, 1, 2, ("0", "3")),
                                   Slot(0, 4, 0, 2, ("0", "3")), Slot(2, 4, 0, 2, ("0", "1"))]
    cpu = [{"node_id": "n", "ip": "127.0.0.1", "gpus": []}] * 3
    assert assign_slots(cpu) == [Slot(rank, 3, rank, 3, None) for rank in range(3)]


def test_missing_resources_names_what_the_cluster_lacks():
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 2.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    assert missing_resources(worker_bundle(False, 1), 4, nodes) is None
    assert missing_resources(worker_bundle(False, 1), 5, nodes) == (
        "5 workers need 5 CPU (1 per worker), and the Ray cluster has 4 CPU in all; add nodes "
        "(ray start --address ...) or ask for fewer workers")
    assert "2 workers need 2 GPU (1 per worker), and the Ray cluster has 0 GPU" in missing_resources(
        worker_bundle(True, 1), 2, nodes)
    assert missing_resources(worker_bundle(False, 3), 1, nodes) == "no node of the Ray cluster has 3 CPU for one worker"


def test_process_group_interface_variables_reach_the_actors():
    environ = {"NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "eth1", "TP_SOCKET_IFNAME": "eth2",
               "NCCL_IB_HCA": "mlx5", "PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0"}
    assert dist_environment(environ) == {"NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "eth1",
                                         "TP_SOCKET_IFNAME": "eth2", "NCCL_IB_HCA": "mlx5"}


def test_an_unreachable_or_malformed_address_is_one_clear_error():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(LongCtxError, match=rf"^cannot reach the Ray cluster at 127.0.0.1:{port}: "):
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(LongCtxError, match="expected auto, HOST:PORT or ray://HOST:PORT"):
        check_reachable("nonsense")
    check_reachable("auto")  # Ray finds these itself


def _python(code, timeout=120):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


def test_importing_longctx_does_not_import_ray():
    out = _python("import sys, longctx, longctx.api, longctx.cli, launch.ray; print('ray' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_launcher_ray_without_ray_is_one_clear_error(tiny_model, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("a short document. " * 20)
    args = ["generate", "--model", tiny_model("llama-mha"), "--doc", str(doc), "--launcher", "ray"]
    out = _python(f"import sys; sys.modules['ray'] = None\nfrom longctx.cli import main\nsys.exit(main({args!r}))")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "longctx: error: --launcher ray needs Ray, which is not installed: pip install 'longctx[ray]' "
        "(or pip install 'ray[default]')"]


# --- one local Ray cluster for the rest of the module ---------------------------------------

@dataclass
class Cluster:
    """A running local Ray cluster: its GCS `address`, `dashboard` URL and the environment its
    command-line tools need."""

    address: str
    dashboard: str
    env: dict


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dashboard_up(url):
    try:
        with urllib.request.urlopen(url + "/api/version", timeout=5) as reply:
            return reply.status == 200
    except OSError:  # not listening yet (or refusing: HTTPError is an OSError)
        return False


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """`ray start --head --block` on loopback with CLUSTER_CPUS CPUs, token authentication off
    (in this process too: its launchers connect to it); stopped by SIGTERM to that process (which
    stops every Ray process it started) when the module ends."""
    pytest.importorskip("ray", reason="the Ray launcher's tests need the ray extra (pip install -e '.[ray]')")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        patch.delenv("RAY_ADDRESS", raising=False)
        yield from _start_cluster(tmp_path_factory)


def _start_cluster(tmp_path_factory):
    import ray

    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths live under it
    log_path = tmp_path_factory.mktemp("ray-head") / "head.log"
    gcs, dashboard, client, agent = (_free_port() for _ in range(4))
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), RAY_USAGE_STATS_ENABLED="0")
    with open(log_path, "w") as log:
        head = subprocess.Popen(
            [os.path.join(BIN, "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
             f"--dashboard-agent-listen-port={agent}", f"--num-cpus={CLUSTER_CPUS}", "--num-gpus=0",
             "--object-store-memory=100000000", f"--temp-dir={temp}", "--disable-usage-stats"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    cluster = Cluster(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", env)
    try:
        deadline = time.monotonic() + 180
        while not _dashboard_up(cluster.dashboard):
            assert head.poll() is None, f"ray start exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the Ray dashboard did not come up:\n{log_path.read_text()[-3000:]}"
            time.sleep(1)
        yield cluster
    finally:
        if ray.is_initialized():  # the launchers' connection from this process
            ray.shutdown()
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # the session started for this cluster only
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _live_actors(cluster):
    from ray.util.state import list_actors

    return [actor for actor in list_actors(address=cluster.address, filters=[("class_name", "=", "RankActor")],
                                           limit=1000) if actor.state != "DEAD"]


def _live_groups(cluster):
    from ray.util.state import list_placement_groups

    return [group for group in list_placement_groups(address=cluster.address, limit=1000)
            if group.state != "REMOVED"]


def _actor_processes():
    """(pid, command line) of every RankActor process on this machine (Ray titles them
    `ray::RankActor...`)."""
    table = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    rows = (line.strip().split(None, 1) for line in table.splitlines() if "ray::RankActor" in line)
    return [(int(pid), args) for pid, args in rows]


def _wait_until(condition, timeout=CLEANUP_S):
    """Poll `condition()` until it is true or `timeout` passes; returns whether it became true
    (Ray reports kills, removals and running tasks asynchronously)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _assert_nothing_left(cluster):
    """No RankActor alive (state API), no placement group left, no RankActor process (process table)."""
    _wait_until(lambda: not _live_actors(cluster) and not _live_groups(cluster) and not _actor_processes())
    assert _live_actors(cluster) == []
    assert _live_groups(cluster) == []
    assert _actor_processes() == []


def _compare_with_local(cluster, path, nproc, placement):
    doc, question = random_prompt(256, 301, 5, seed=nproc)
    with LongContextLM(path, method="apb", nproc=nproc) as lm:
        local = {name: lm.run_ids(doc, question, max_new_tokens=5, method=name, return_hidden=True)
                 for name in METHODS}
    with LongContextLM(path, method="apb", nproc=nproc, launcher="ray", ray_address=cluster.address,
                       placement=placement) as lm:
        actors = {actor.actor_id: actor.pid for actor in _live_actors(cluster)}
        remote = {name: lm.run_ids(doc, question, max_new_tokens=5, method=name, return_hidden=True)
                  for name in METHODS}
        _check_streaming(lm)
        assert {actor.actor_id: actor.pid for actor in _live_actors(cluster)} == actors  # the same warm actors
        with pytest.raises(LongCtxError, match="^the question is empty$"):  # raised by every actor's engine
            lm.run(Request(doc, [], 5))
        with pytest.raises(LongCtxError, match="shut down"):  # the failure stopped the actors
            lm.run_ids(doc, question, max_new_tokens=5)
    assert len(actors) == nproc
    for name in METHODS:
        assert remote[name].tokens == local[name].tokens, name
        assert remote[name].nproc == nproc
    for name in EXACT:
        for key in ("doc_hidden", "query_hidden"):
            assert torch.allclose(getattr(remote[name], key), getattr(local[name], key), rtol=0, atol=HIDDEN_TOLERANCE), (name, key)
    _assert_nothing_left(cluster)  # leaving the `with` block freed the actors and the placement group


def _check_streaming(lm):
    """`stream` yields the answer's text in pieces that join to `generate`'s; a reader that stops
    after the first piece leaves the actors serving."""
    text, question = "the quick brown fox jumps over the lazy dog. " * 8, "what jumps?"
    stream = lm.stream(text, question, max_new_tokens=6)
    pieces = list(stream)
    expected = lm.generate(text, question, max_new_tokens=6)
    assert "".join(pieces) == stream.result.text == expected.text and stream.result.tokens == expected.tokens
    for _ in lm.stream(text, question, max_new_tokens=6):
        break
    assert lm.generate(text, question, max_new_tokens=6).tokens == expected.tokens


def test_two_actors_give_the_local_launchers_tokens_and_hidden_states(ray_cluster, tiny_model):
    _compare_with_local(ray_cluster, tiny_model("llama-mha"), 2, "pack")


@pytest.mark.slow
def test_four_actors_give_the_local_launchers_tokens_and_hidden_states(ray_cluster, tiny_model):
    _compare_with_local(ray_cluster, tiny_model("llama-mha"), 4, "spread")  # one node: spread is best effort


def test_more_workers_than_the_cluster_has_is_one_clear_error(ray_cluster, tiny_model):
    with pytest.raises(LongCtxError, match=r"^--launcher ray: 5 workers need 5 CPU \(1 per worker\), and the Ray "
                                           r"cluster has 4 CPU in all"):
        LongContextLM(tiny_model("llama-mha"), nproc=5, launcher="ray", ray_address=ray_cluster.address)
    assert _live_groups(ray_cluster) == [] and _live_actors(ray_cluster) == []  # nothing was started


def test_resources_held_by_others_end_the_bounded_wait(ray_cluster, tiny_model):
    from ray.util.placement_group import placement_group, remove_placement_group

    import ray

    if not ray.is_initialized():
        ray.init(address=ray_cluster.address)
    other_job = placement_group([{"CPU": 3.0}])
    try:
        assert other_job.wait(timeout_seconds=30)
        with pytest.raises(LongCtxError, match=r"could not reserve 2 workers' resources within 2 s \(the cluster "
                                               r"has 1 CPU free"):
            LongContextLM(tiny_model("llama-mha"), nproc=2, launcher="ray", ray_address=ray_cluster.address,
                          timeout_s=2)
    finally:
        remove_placement_group(other_job)
    _assert_nothing_left(ray_cluster)


def _running_runs(cluster):
    from ray.util.state import list_tasks

    return list_tasks(address=cluster.address, filters=[("name", "=", "RankActor.run"), ("state", "=", "RUNNING")])


def test_actor_killed_during_a_request_fails_fast_and_leaves_nothing(ray_cluster, tiny_model):
    timeout_s = 120
    lm = LongContextLM(tiny_model("llama-mha"), nproc=2, launcher="ray", ray_address=ray_cluster.address,
                       timeout_s=timeout_s)
    doc, question = random_prompt(256, 200, 4, seed=7)
    victim = min(actor.pid for actor in _live_actors(ray_cluster))
    os.kill(victim, signal.SIGSTOP)  # it cannot start the request: its peer waits in the first collective
    outcome = {}

    def request():
        try:
            lm.run_ids(doc, question, max_new_tokens=4)
        except Exception as exc:  # the error under test
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=request)
    try:
        thread.start()
        assert _wait_until(lambda: _running_runs(ray_cluster), timeout=timeout_s)  # the peer is inside `run`
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        thread.join(timeout=timeout_s)
    finally:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not thread.is_alive()
    error = outcome["error"]
    assert isinstance(error, WorkerError) and "died" in str(error) and "all workers were stopped" in str(error)
    assert outcome["at"] - killed_at < timeout_s  # the contract: the driver hears before any collective times out
    _assert_nothing_left(ray_cluster)
    with pytest.raises(LongCtxError, match="shut down"):  # the next request says so at once
        lm.run_ids(doc, question, max_new_tokens=4)
    lm.close()


def test_ctrl_c_on_the_driver_leaves_no_actor(ray_cluster, tiny_model):
    script = textwrap.dedent(f"""
        import time
        from longctx.api import LongContextLM
        with LongContextLM({tiny_model("llama-mha")!r}, nproc=2, launcher="ray", ray_address={ray_cluster.address!r}):
            print("ready", flush=True)
            time.sleep(600)
    """)
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONPATH=REPO), preexec_fn=default_sigint)
    try:
        assert driver.stdout.readline().strip() == "ready"
        assert len(_live_actors(ray_cluster)) == 2
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert "KeyboardInterrupt" in err
    _assert_nothing_left(ray_cluster)


def test_ray_job_submit_runs_longctx_generate(ray_cluster, tiny_model, tmp_path):
    path = tiny_model("llama-mha")
    text, question = "the quick brown fox jumps over the lazy dog. " * 8, "what jumps?"
    doc = tmp_path / "doc.txt"
    doc.write_text(text)
    out = subprocess.run(
        [os.path.join(BIN, "ray"), "job", "submit", f"--address={ray_cluster.dashboard}", f"--working-dir={REPO}",
         "--", "longctx", "generate", "--launcher", "ray", "--model", path, "--method", "burst", "--nproc", "2",
         "--doc", str(doc), "--question", question, "--max-new-tokens", "4", "--json"],
        capture_output=True, text=True, timeout=600, env=ray_cluster.env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("{") and '"answer"' in line]
    assert len(lines) == 1, out.stdout[-3000:]
    payload = json.loads(lines[0])
    doc_ids, query_ids = encode_prompt(load_tokenizer(path), text, question)
    assert payload["nproc"] == 2 and payload["method"] == "burst"
    assert payload["tokens"] == dense_result(path, doc_ids, query_ids, max_new_tokens=4).tokens
    _assert_nothing_left(ray_cluster)
