"""Which network interface a worker's gloo / NCCL sockets bind to in a job that spans machines.

Left alone, gloo binds to the address its host name resolves to, which on a default
Debian/Ubuntu install is 127.0.1.1 (an /etc/hosts line): peers on other machines then try to
reach a worker at 127.0.1.1 and hang until the timeout. So, when the user set neither
GLOO_SOCKET_IFNAME nor NCCL_SOCKET_IFNAME, every worker of a multi-node job binds both to the
interface that routes to rank 0, the one whose address the kernel picks as source for a packet
to rank 0's store (`route_interface`).

On rank 0's own machine that route can be the loopback (rank 0's name resolving to 127.0.1.1
there, as torchrun's MASTER_ADDR does); those workers instead take the interface that routes to
a worker of another machine, which publishes its own source address in the job's store first
(`bind_to_rank0_route`). Nothing here sends a packet: the source address comes from connecting
a UDP socket, which only consults the routing table.
"""

import fcntl
import ipaddress
import os
import socket
import struct

from longctx.errors import LongCtxError

IFNAME_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
PEER_KEY = "longctx/route-to-rank0"  # a source address of a machine other than rank 0's
_SIOCGIFADDR = 0x8915


def source_address(host):
    """The local address the kernel would use as source for traffic to `host` (a name or an IPv4
    / IPv6 address). OSError when `host` does not resolve or no route leads there."""
    family, _, _, _, address = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(address)  # UDP: sets the route and source address, sends nothing
        return probe.getsockname()[0]


def _ipv4_of(name):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            request = struct.pack("256s", name.encode()[:15])
            return socket.inet_ntoa(fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)[20:24])
        except OSError:  # no IPv4 address on this interface
            return None


def _ipv6_addresses(table="/proc/net/if_inet6"):
    """{address: interface name} of every IPv6 address (Linux's table; empty when absent)."""
    try:
        with open(table) as handle:
            rows = [line.split() for line in handle]
    except OSError:
        return {}
    return {str(ipaddress.IPv6Address(bytes.fromhex(row[0]))): row[5] for row in rows if len(row) >= 6}


def interface_of(address):
    """The name of this machine's interface that holds `address` (a loopback address: the
    loopback interface); None when no interface holds it."""
    ip = ipaddress.ip_address(address.split("%")[0])
    names = [name for _, name in socket.if_nameindex()]
    if ip.is_loopback:
        return next((name for name in names if name.startswith("lo")), None)
    if ip.version == 6:
        return _ipv6_addresses().get(str(ip))
    return next((name for name in names if _ipv4_of(name) == str(ip)), None)


def interface_address(name):
    """An address of the interface `name` (IPv4 first), None when it has none or does not exist."""
    if not name:
        return None
    return _ipv4_of(name) or next((address for address, owner in _ipv6_addresses().items() if owner == name), None)


def route_interface(host):
    """(interface name, source address) of this machine's route to `host`."""
    address = source_address(host)
    name = interface_of(address)
    if name is None:
        raise LongCtxError(f"no network interface holds {address}, this machine's address towards {host}; "
                           "set GLOO_SOCKET_IFNAME (and NCCL_SOCKET_IFNAME) to the interface to use")
    return name, address


def bind_to_rank0_route(store, rank0_host, environ=None):
    """Set GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME in `environ` (default: this process's
    environment) to the interface that routes to `rank0_host`, unless the user set either.
    Called by `launch.worker.init_worker` before the process group starts, on every worker of
    a job that spans machines; `store` is the job's rendezvous store (a worker on rank 0's
    machine whose route is the loopback waits there, within the store's timeout, for a worker
    of another machine to publish its address). Returns the interface name, or None when the
    user's choice stands."""
    environ = os.environ if environ is None else environ
    if any(environ.get(name) for name in IFNAME_VARIABLES):
        return None
    try:
        name, address = route_interface(rank0_host)
        if ipaddress.ip_address(address.split("%")[0]).is_loopback:  # rank 0's machine, its name on 127.0.1.1
            name, _ = route_interface(_peer_address(store))
        else:
            store.set(PEER_KEY, address)
    except OSError as exc:
        raise LongCtxError(f"cannot find the network interface towards rank 0 at {rank0_host}: {exc}; "
                           "set GLOO_SOCKET_IFNAME (and NCCL_SOCKET_IFNAME) to the interface to use") from None
    for variable in IFNAME_VARIABLES:
        environ[variable] = name
    return name


def _peer_address(store):
    """The address a worker of another machine published under PEER_KEY (waits at most the
    store's timeout)."""
    try:
        return store.get(PEER_KEY).decode()
    except RuntimeError:  # the store's timeout (DistStoreError)
        raise LongCtxError("rank 0's address is a loopback address on its own machine and no worker of another "
                           "machine published its route within the timeout; set GLOO_SOCKET_IFNAME (and "
                           "NCCL_SOCKET_IFNAME) to the interface to use") from None
