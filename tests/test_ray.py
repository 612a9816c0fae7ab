"""The Ray launcher (launch/ray.py, launch/ray_connect.py) on a real local Ray cluster.

The module starts one cluster (`ray.init` in a head process of its own on loopback, 4 CPUs, a
100 MB object store, its own temp dir, every port chosen by Ray) and stops it at the end;
every test that needs Ray shares it. Ray is part of the `dev` extra: without it these tests
fail, they do not skip. Tiny random-weight models, CPU, gloo. Checked: the same tokens as the
local launcher for burst, ulysses and apb on 2 actors and burst and apb on 4 (burst and ulysses
also the same hidden states), with a driver GLOO_SOCKET_IFNAME that must not reach the actors;
warm actors across requests; the placement group freed on exit; more workers than the cluster
has, or than it has free, waited for within the timeout with progress on stderr; --worker-env
reaching the actors; a driver inside a placement group using its bundles; an actor killed
during a request; Ctrl-C on a driver; `ray job submit ... -- longctx generate --launcher ray`.
Without a cluster: a stale saved address (one line, at once), an address that never answers
(the timeout; Ctrl-C at once), IPv6 and ray:// addresses, token handling, relative model paths.
Across two machines: tests/multinode/test_ray_nodes.py.

Measured on the shared 2-core machine: about 3 minutes for the module (the cluster starts in
6-10 s; the 2-actor comparison 25-40 s, the job submission 20-30 s, Ctrl-C 15 s, the killed
actor 8-10 s; the 4-actor comparison, 45 s, is marked slow).
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
from launch.ray import (Slot, assign_slots, cluster_summary, model_path_for_workers, reusable_bundles, wants_gpus,
                        worker_bundle)
from launch.ray_connect import (check_reachable, connect, resolve_address, split_address, token_available,
                                use_available_token)
from longctx.api import LongContextLM
from longctx.compare import random_prompt
from longctx.config import RunConfig
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


def test_cluster_summary_names_what_the_workers_need_and_the_cluster_holds():
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 2.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    assert cluster_summary(worker_bundle(False, 1), nodes, {"CPU": 1.0}) == "the cluster has 4 CPU (1 free) on 2 nodes"
    assert cluster_summary(worker_bundle(True, 1), nodes, {}) == (
        "the cluster has 4 CPU (0 free), 0 GPU (0 free) on 2 nodes")


def test_device_auto_follows_the_driver_not_the_cluster_of_the_moment():
    assert wants_gpus("cuda", driver_has_cuda=False) and not wants_gpus("cpu", driver_has_cuda=True)
    assert wants_gpus("auto", driver_has_cuda=True) and not wants_gpus("auto", driver_has_cuda=False)


def test_the_callers_placement_group_lends_its_last_fitting_bundles():
    specs = [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}]
    assert reusable_bundles(specs, worker_bundle(False, 1), 2) == [2, 3]
    assert reusable_bundles(specs, worker_bundle(True, 1), 2) == [2, 3]
    with pytest.raises(LongCtxError, match=r"placement group with 2 bundles that hold a worker \(1 CPU, 1 GPU\); "
                                           r"3 workers need 3 such bundles"):
        reusable_bundles(specs, worker_bundle(True, 1), 3)


def test_relative_model_paths_are_resolved_on_the_driver_unless_a_working_dir_ships_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert model_path_for_workers("models/m", in_working_dir=False) == str(tmp_path / "models" / "m")
    assert model_path_for_workers("models/m", in_working_dir=True) == "models/m"  # each node's copy
    assert model_path_for_workers("../m", in_working_dir=True) == str(tmp_path.parent / "m")  # not shipped
    assert model_path_for_workers("/abs/m", in_working_dir=False) == "/abs/m"


def test_only_explicit_worker_variables_are_set():
    assert RunConfig(worker_env={"B": "2", "A": "1"}).validate().worker_env == (("A", "1"), ("B", "2"))
    with pytest.raises(LongCtxError, match=r"^--worker-env: 1X='v' is not NAME=VALUE"):
        RunConfig(worker_env={"1X": "v"}).validate()


def test_addresses_parse_with_ipv6_and_ray_client_forms():
    assert split_address("10.0.0.1:6379") == ("", "10.0.0.1", 6379)
    assert split_address("[fd00::1]:6379") == ("", "fd00::1", 6379)
    assert split_address("ray://[::1]:10001") == ("ray://", "::1", 10001)
    assert split_address("ray://head:10001") == ("ray://", "head", 10001)
    for bad in ("nonsense", "fd00::1:6379", "[::1]", "host:"):
        with pytest.raises(LongCtxError, match=r"expected auto, HOST:PORT, \[IPV6\]:PORT or ray://HOST:PORT"):
            split_address(bad)


def _closed_port(family=socket.AF_INET, host="127.0.0.1"):
    with socket.socket(family) as sock:  # a port nothing listens on
        sock.bind((host, 0))
        return sock.getsockname()[1]


def test_an_unreachable_address_is_one_clear_error_naming_where_it_came_from(tmp_path):
    port = _closed_port()
    with pytest.raises(LongCtxError, match=rf"^cannot reach the Ray cluster at 127.0.0.1:{port} \(--ray-address\): "):
        check_reachable(f"127.0.0.1:{port}", "--ray-address")
    port6 = _closed_port(socket.AF_INET6, "::1")
    with pytest.raises(LongCtxError, match=rf"^cannot reach the Ray cluster at \[::1\]:{port6} "):
        check_reachable(f"[::1]:{port6}", "--ray-address")
    saved = tmp_path / "ray" / "ray_current_cluster"
    saved.parent.mkdir()
    saved.write_text(f"127.0.0.1:{port}")
    environ = {"RAY_TMPDIR": str(tmp_path)}
    assert resolve_address(None, environ) == (f"127.0.0.1:{port}",
                                              f"the address the last `ray start` here saved in {saved}")
    assert resolve_address("auto", {"RAY_ADDRESS": "h:1", **environ}) == ("h:1", "RAY_ADDRESS")
    assert resolve_address(None, {"RAY_TMPDIR": str(tmp_path / "none")}) == (None, "a new local cluster")
    with pytest.raises(LongCtxError, match="^--ray-address auto: no Ray cluster was started on this machine"):
        resolve_address("auto", {"RAY_TMPDIR": str(tmp_path / "none")})


def test_a_saved_token_turns_token_authentication_on_unless_the_user_chose(tmp_path):
    token = tmp_path / "token"
    token.write_text("secret")
    environ = {"RAY_AUTH_TOKEN_PATH": str(token)}
    assert use_available_token(environ) and environ["RAY_AUTH_MODE"] == "token"
    chosen = {"RAY_AUTH_TOKEN_PATH": str(token), "RAY_AUTH_MODE": "disabled"}
    assert not use_available_token(chosen) and chosen["RAY_AUTH_MODE"] == "disabled"
    assert not use_available_token({"HOME": str(tmp_path)}) and not token_available({"HOME": str(tmp_path)})


def _ray_cli(tmp_path, *extra):
    """(command, environment, port) of `longctx generate --launcher ray` with Ray's saved
    address (RAY_TMPDIR) pointing at a port nothing listens on: a head that died without
    `ray stop`."""
    port = _closed_port()
    (tmp_path / "ray").mkdir(exist_ok=True)
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
    doc = tmp_path / "doc.txt"
    doc.write_text("a short document. " * 20)
    command = [sys.executable, "-m", "longctx.cli", "generate", "--model",
               os.path.join(REPO, "examples", "models", "needle-llama"), "--doc", str(doc), "--launcher", "ray", *extra]
    environ = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    return command, {**environ, "RAY_TMPDIR": str(tmp_path), "PYTHONPATH": REPO}, port


def test_a_stale_saved_address_fails_at_once_with_one_line(tmp_path):
    command, env, port = _ray_cli(tmp_path, "--timeout", "20")
    started = time.monotonic()
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.monotonic() - started
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith(f"longctx: error: cannot reach the Ray cluster at 127.0.0.1:{port} (the address the "
                               f"last `ray start` here saved in {tmp_path}/ray/ray_current_cluster): "), out.stderr
    print(f"stale saved address: one line after {elapsed:.1f} s")


class _SilentRay:
    """A stand-in for the `ray` module whose `init` never returns (an address that accepts
    connections but never answers, or a cluster that wants a token it does not get)."""

    def __init__(self):
        self.release = threading.Event()

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        self.release.wait(60)


def test_an_address_that_never_answers_fails_within_the_timeout_and_ctrl_c_ends_at_once(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with socket.socket() as silent:  # accepts connections, never speaks Ray
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        fake = _SilentRay()
        started = time.monotonic()
        with pytest.raises(LongCtxError, match=rf"^could not join the Ray cluster at {address} within 2 s "
                                               r"\(--timeout\); is it a Ray cluster, and does it need"):
            connect(fake, address, timeout_s=2)
        assert time.monotonic() - started < 10
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # even under a shell that ignores it
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        started = time.monotonic()
        try:
            with pytest.raises(KeyboardInterrupt):
                connect(fake, address, timeout_s=300)
        finally:
            signal.signal(signal.SIGINT, previous)
            fake.release.set()
    stopped = time.monotonic() - started
    assert stopped < 5, stopped
    print(f"silent address: Ctrl-C ended the wait {stopped - 1.0:.2f} s after it came")


class _FlakyClientRay:
    """A stand-in for the `ray` module whose client server fails to start `failures` times
    (Ray's "Initialization failure from server", ray-project/ray#63202), then connects."""

    def __init__(self, failures):
        self.failures, self.inits, self.shutdowns, self.connected = failures, 0, 0, False

    def is_initialized(self):
        return self.connected

    def init(self, **kwargs):
        self.inits += 1
        if self.inits <= self.failures:
            raise ConnectionAbortedError("Initialization failure from server:\n")
        self.connected = True

    def shutdown(self):
        self.shutdowns += 1


@pytest.mark.parametrize("failures", [1, 2, 3])
def test_a_client_server_that_fails_to_start_is_tried_again(monkeypatch, failures):
    """A ray:// address is tried up to three times when Ray's client server dies at start;
    the third failure is one error line saying how often it was tried."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with socket.socket() as server:  # the TCP check only needs the port open
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"ray://127.0.0.1:{server.getsockname()[1]}"
        fake = _FlakyClientRay(failures)
        if failures < 3:
            connect(fake, address, timeout_s=30)
            assert fake.connected and fake.inits == failures + 1
        else:
            with pytest.raises(LongCtxError, match=rf"^cannot connect to the Ray cluster at {address} \(3 tries\): "
                                                   "Initialization failure from server:$"):
                connect(fake, address, timeout_s=30)
            assert fake.inits == 3


def test_a_plain_address_is_tried_once(monkeypatch):
    """Only Ray client addresses are tried again: a HOST:PORT driver's failure is reported at once."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        fake = _FlakyClientRay(1)
        with pytest.raises(LongCtxError, match=rf"^cannot connect to the Ray cluster at {address}: Initialization"):
            connect(fake, address, timeout_s=30)
        assert fake.inits == 1


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


HEAD_SCRIPT = """
import json, sys, ray
context = ray.init(num_cpus=int(sys.argv[2]), num_gpus=0, object_store_memory=100_000_000, _temp_dir=sys.argv[1],
                   _node_ip_address="127.0.0.1", include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=0)
print(json.dumps({"gcs": context.address_info["gcs_address"], "dashboard": context.dashboard_url}), flush=True)
sys.stdin.read()  # the cluster lives until the test closes this process's stdin
ray.shutdown()
"""


def _dashboard_up(url):
    try:
        with urllib.request.urlopen(url + "/api/version", timeout=5) as reply:
            return reply.status == 200
    except OSError:  # not listening yet (or refusing: HTTPError is an OSError)
        return False


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A Ray cluster on this machine with CLUSTER_CPUS CPUs, token authentication off (in this
    process too: its launchers connect to it); stopped when the module ends."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        patch.delenv("RAY_ADDRESS", raising=False)
        yield from _start_cluster(tmp_path_factory)


def _start_cluster(tmp_path_factory):
    """Start the head in a process of its own (`ray.init` there, so every port is Ray's choice:
    none is picked here, and no fixed one such as the Ray client server's is needed), read its
    addresses, and stop it by closing that process's stdin (`ray.shutdown`; killed if it hangs)."""
    import ray

    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths live under it
    log_path = tmp_path_factory.mktemp("ray-head") / "head.log"
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), RAY_USAGE_STATS_ENABLED="0")
    with open(log_path, "w") as log:
        head = subprocess.Popen([sys.executable, "-c", HEAD_SCRIPT, temp, str(CLUSTER_CPUS)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, text=True, env=env, start_new_session=True)
    try:
        line = head.stdout.readline()  # written once the cluster is up; empty if the head died
        assert line, f"the Ray head did not start:\n{log_path.read_text()[-3000:]}"
        addresses = json.loads(line)
        port = addresses["gcs"].rsplit(":", 1)[1]
        cluster = Cluster(f"127.0.0.1:{port}", f"http://{addresses['dashboard']}", env)
        assert _dashboard_up(cluster.dashboard), f"the Ray dashboard is not up:\n{log_path.read_text()[-3000:]}"
        yield cluster
    finally:
        if ray.is_initialized():  # the launchers' connection from this process
            ray.shutdown()
        head.stdin.close()
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


def _compare_with_local(cluster, path, nproc, placement, monkeypatch, methods=METHODS):
    doc, question = random_prompt(256, 301, 5, seed=nproc)
    with LongContextLM(path, method="apb", nproc=nproc) as lm:
        local = {name: lm.run_ids(doc, question, max_new_tokens=5, method=name, return_hidden=True)
                 for name in methods}
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "longctx-none0")  # the driver's own: never the actors'
    with LongContextLM(path, method="apb", nproc=nproc, launcher="ray", ray_address=cluster.address,
                       placement=placement) as lm:
        actors = {actor.actor_id: actor.pid for actor in _live_actors(cluster)}
        remote = {name: lm.run_ids(doc, question, max_new_tokens=5, method=name, return_hidden=True)
                  for name in methods}
        _check_streaming(lm)
        assert {actor.actor_id: actor.pid for actor in _live_actors(cluster)} == actors  # the same warm actors
        with pytest.raises(LongCtxError, match="^the question is empty$"):  # raised by every actor's engine
            lm.run(Request(doc, [], 5))
        with pytest.raises(LongCtxError, match="shut down"):  # the failure stopped the actors
            lm.run_ids(doc, question, max_new_tokens=5)
    assert len(actors) == nproc
    for name in methods:
        assert remote[name].tokens == local[name].tokens, name
        assert remote[name].nproc == nproc
    for name in set(EXACT) & set(methods):
        for key in ("doc_hidden", "query_hidden"):
            assert torch.allclose(getattr(remote[name], key), getattr(local[name], key), rtol=0,
                                  atol=HIDDEN_TOLERANCE), (name, key)
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


def test_two_actors_give_the_local_launchers_tokens_and_hidden_states(ray_cluster, tiny_model, monkeypatch):
    _compare_with_local(ray_cluster, tiny_model("llama-mha"), 2, "pack", monkeypatch)


@pytest.mark.slow
def test_four_actors_give_the_local_launchers_tokens_and_hidden_states(ray_cluster, tiny_model, monkeypatch):
    """burst and apb (ulysses too on 2 actors; workers on two real nodes: tests/multinode)."""
    _compare_with_local(ray_cluster, tiny_model("llama-mha"), 4, "spread", monkeypatch, ("burst", "apb"))


def test_more_workers_than_the_cluster_has_are_waited_for_within_the_timeout(ray_cluster, tiny_model, capfd):
    """No pre-check against what the cluster holds now (an autoscaler would add nodes): the
    placement group is submitted, the wait is reported on stderr and ends at the timeout."""
    started = time.monotonic()
    with pytest.raises(LongCtxError, match=r"^--launcher ray: could not reserve 5 workers \(5 CPU\) within 4 s "
                                           r"\(--timeout\); the cluster has 4 CPU \(4 free\) on 1 node: add nodes"):
        LongContextLM(tiny_model("llama-mha"), nproc=5, launcher="ray", ray_address=ray_cluster.address, timeout_s=4)
    assert time.monotonic() - started < 30
    assert "longctx: waiting for the Ray cluster to hold 5 workers (5 CPU); the cluster has 4 CPU" in capfd.readouterr().err
    _assert_nothing_left(ray_cluster)


def test_resources_held_by_others_end_the_bounded_wait(ray_cluster, tiny_model):
    from ray.util.placement_group import placement_group, remove_placement_group

    import ray

    if not ray.is_initialized():
        ray.init(address=ray_cluster.address)
    other_job = placement_group([{"CPU": 3.0}])
    try:
        assert other_job.wait(timeout_seconds=30)
        with pytest.raises(LongCtxError, match=r"could not reserve 2 workers \(2 CPU\) within 2 s \(--timeout\); "
                                               r"the cluster has 4 CPU \(1 free\)"):
            LongContextLM(tiny_model("llama-mha"), nproc=2, launcher="ray", ray_address=ray_cluster.address,
                          timeout_s=2)
    finally:
        remove_placement_group(other_job)
    _assert_nothing_left(ray_cluster)


def test_worker_env_reaches_the_actors(ray_cluster, tiny_model):
    """An interface named in --worker-env is the one the actors' gloo uses: a missing one fails
    their start with gloo's own error (and the driver's variables never get there: see above)."""
    with pytest.raises(WorkerError, match=r"^worker \d on \S+ \([0-9.]+\) failed: .*longctx-none1"):
        LongContextLM(tiny_model("llama-mha"), nproc=2, launcher="ray", ray_address=ray_cluster.address,
                      worker_env={"GLOO_SOCKET_IFNAME": "longctx-none1"}, timeout_s=30)
    _assert_nothing_left(ray_cluster)


def test_inside_a_placement_group_its_bundles_are_used(ray_cluster, tiny_model):
    """A driver running in a placement group of its own (as under Ray Tune or Serve) puts the
    workers in that group's bundles instead of asking for a new group."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if not ray.is_initialized():
        ray.init(address=ray_cluster.address)
    path = tiny_model("llama-mha")
    doc, question = random_prompt(256, 120, 3, seed=5)

    @ray.remote(num_cpus=1)
    def driver():
        with LongContextLM(path, method="burst", nproc=2, launcher="ray") as lm:
            groups = [entry for entry in placement_group_table().values() if entry["state"] != "REMOVED"]
            return lm.run_ids(doc, question, max_new_tokens=3).tokens, len(groups)

    group = placement_group([{"CPU": 1.0}] * 3)
    try:
        assert group.wait(timeout_seconds=30)
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0,
                                                    placement_group_capture_child_tasks=True)
        tokens, groups = ray.get(driver.options(scheduling_strategy=strategy,
                                                runtime_env={"env_vars": {"PYTHONPATH": REPO}}).remote(), timeout=300)
        assert groups == 1  # only the caller's
        assert tokens == dense_result(path, doc, question, max_new_tokens=3).tokens
        assert [entry["state"] for entry in placement_group_table().values()].count("CREATED") == 1  # not removed
    finally:
        remove_placement_group(group)
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
