"""A two- or three-machine test bed on one Linux host: network namespaces on a private bridge.

Each node is a network namespace with its own loopback and one `eth0` (a veth pair whose other
end sits on a bridge that only these namespaces share, with no address on the host: traffic
stays between the nodes). Every process of a node runs under `ip netns exec` in a UTS namespace
of its own, so it sees the node's host name, which resolves to 127.0.1.1 as on a default
Debian/Ubuntu install; the other nodes' names resolve to their addresses (the node's /etc/hosts
comes from /etc/netns/NAME/hosts, which `ip netns exec` mounts over /etc/hosts). The file
system is shared, so every node sees the repository and the models, except `Node.tmp`: the
same path on every node, a directory of its own on each (a bind mount in the process's own
mount namespace), for what one machine keeps to itself (Ray's session directories, which a Ray
worker node places at the head's path).

Names are unique per bed (`longctx-PID-TAG-NODE`); `close()` kills every process of every node
and removes the namespaces, the bridge and the /etc/netns files, whatever happened before (it
also runs at interpreter exit), and a new bed first removes what beds of dead processes left.
Needs root and iproute2; `unavailable()` says why a bed cannot be made here.
"""

import atexit
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

NETNS_ETC = "/etc/netns"
PREFIX = "longctx-"
SUBNET = "10.231.{index}.0/24"  # on the bed's own bridge only: no route on the host
TMP_ROOT = "/tmp/longctx-bed-{tag}"  # the nodes' private directories and the path they appear at


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable():
    """None when namespaces can be made here, else the reason (one line)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "network namespaces need iproute2 (ip) and util-linux (unshare)"
    probe = f"{PREFIX}probe-{os.getpid()}-{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale():
    """Remove the namespaces, bridges and /etc/netns files of beds whose process is gone."""
    listed = _ip("netns", "list", check=False).stdout.split()
    for name in (entry for entry in listed if entry.startswith(PREFIX)):
        parts = name.split("-")
        if len(parts) >= 4 and parts[1].isdigit() and not _alive(int(parts[1])):
            _remove_namespace(name)
            _ip("link", "del", f"lc{parts[2]}br", check=False)
            shutil.rmtree(TMP_ROOT.format(tag=parts[2]), ignore_errors=True)


def _namespace_pids(name):
    out = _ip("netns", "pids", name, check=False).stdout.split()
    return [int(pid) for pid in out if pid.isdigit()]


def _remove_namespace(name):
    for pid in _namespace_pids(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while _namespace_pids(name) and time.monotonic() < deadline:
        time.sleep(0.1)
    _ip("netns", "del", name, check=False)
    shutil.rmtree(os.path.join(NETNS_ETC, name), ignore_errors=True)


@dataclass
class Node:
    """One machine of the bed: its namespace `netns`, host `name`, `address` on the bridge, base
    environment `env`, and `tmp`, the path of its private directory (`private` on the host)."""

    netns: str
    name: str
    address: str
    env: dict
    tmp: str
    private: str

    def command(self, args):
        """`args` as run inside this node (its network, its host name, its private `tmp`)."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--mount", "sh", "-c",
                'mount --bind "$1" "$2" && hostname "$0" && shift 2 && exec "$@"', self.name, self.private,
                self.tmp, *args]

    def popen(self, args, env=None, **kwargs):
        """Start `args` inside this node; `env` is added to the node's environment."""
        return subprocess.Popen(self.command(args), env={**self.env, **(env or {})}, **kwargs)

    def run(self, args, env=None, timeout=300, **kwargs):
        """Run `args` inside this node to its end (stdout and stderr captured as text)."""
        return subprocess.run(self.command(args), env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    def pids(self):
        """Every live process in this node's network namespace."""
        return [pid for pid in _namespace_pids(self.netns) if _alive(pid) and not _zombie(pid)]

    def kill_all(self):
        """SIGKILL every process of this node (a machine that dies)."""
        for pid in _namespace_pids(self.netns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def link(self, up):
        """Bring this node's network link up or down (a cable pulled)."""
        _ip("-n", self.netns, "link", "set", "eth0", "up" if up else "down")

    def shape(self, gbit_per_s):
        """Limit what this node sends to `gbit_per_s` (a token bucket, `tc tbf`); None: unshaped."""
        base = ["tc", "-n", self.netns, "qdisc"]
        if gbit_per_s is None:
            subprocess.run([*base, "del", "dev", "eth0", "root"], capture_output=True)
            return
        rate_bytes = gbit_per_s * 1e9 / 8
        burst = max(64 * 1024, int(rate_bytes * 0.002))  # 2 ms of traffic: smooth, and enough for the rate
        subprocess.run([*base, "replace", "dev", "eth0", "root", "tbf", "rate", f"{gbit_per_s * 1000:g}mbit",
                        "burst", str(burst), "latency", "100ms"], check=True, capture_output=True)


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class Bed:
    """`nodes` machines ("a", "b", ...) on one private bridge; a context manager. `env` is every
    node's base environment (default: this process's)."""

    def __init__(self, nodes=("a", "b"), env=None):
        sweep_stale()
        self.tag = secrets.token_hex(3)
        self.bridge = f"lc{self.tag}br"
        self.nodes, self._made = {}, []
        self._closed = False
        atexit.register(self.close)
        index = int(self.tag, 16) % 250
        base = dict(os.environ if env is None else env)
        self.root = TMP_ROOT.format(tag=self.tag)
        try:
            os.makedirs(os.path.join(self.root, "tmp"))
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("link", "set", self.bridge, "up")
            addresses = {name: SUBNET.format(index=index).replace(".0/24", f".{n + 1}") for n, name in enumerate(nodes)}
            for name in nodes:
                self._add_node(name, addresses, base)
        except BaseException:
            self.close()
            raise

    def _add_node(self, name, addresses, base):
        netns, host, veth = f"{PREFIX}{os.getpid()}-{self.tag}-{name}", f"node{name}", f"lc{self.tag}{name}"
        _ip("netns", "add", netns)
        self._made.append(netns)
        os.makedirs(os.path.join(NETNS_ETC, netns), exist_ok=True)
        others = "".join(f"{address} node{other}\n" for other, address in addresses.items() if other != name)
        with open(os.path.join(NETNS_ETC, netns, "hosts"), "w") as hosts:
            hosts.write(f"127.0.0.1 localhost\n127.0.1.1 {host}\n{others}")
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", netns, "addr", "add", f"{addresses[name]}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        private = os.path.join(self.root, name)
        os.makedirs(private)
        self.nodes[name] = Node(netns, host, addresses[name], dict(base), os.path.join(self.root, "tmp"), private)

    def __getitem__(self, name):
        return self.nodes[name]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Kill every process of every node; remove the namespaces, the bridge, their files and
        the nodes' private directories."""
        if self._closed:
            return
        self._closed = True
        for netns in self._made:
            _remove_namespace(netns)
        _ip("link", "del", self.bridge, check=False)
        shutil.rmtree(self.root, ignore_errors=True)
