"""Where Ray listens: every socket of every Ray that raygenre or the tests start is on the loopback address.

``listening(pids)`` reads the sockets that processes hold (``/proc/<pid>/fd``) and where they are bound
(``/proc/net/tcp``, ``tcp6``, ``udp``, ``udp6``): no ``ss`` needed, and only the processes asked about, never the
rest of the machine. ``tests/test_cluster.py`` uses it for its ``ray start`` head and its multi-node cluster;
here it checks the helper itself and raygenre's own local Ray (``runtime.ensure_ray`` -> ``ray.init``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

_TCP_LISTEN, _UDP_UNCONNECTED = "0A", "07"


def descendants(pid: int) -> set[int]:
    """``pid`` and every live process below it (by parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # state ppid ...
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in found:
            found.add(p)
            todo.extend(children.get(p, []))
    return found


def _address(hex_addr: str) -> str:
    """``/proc/net/tcp``'s ``0100007F`` (IPv4) or 32 hex digits (IPv6, four host-order words) -> text form."""
    raw = bytes.fromhex(hex_addr)
    host_order = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(host_order))


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or not ours to read
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listening(pids: Iterable[int]) -> list[tuple[int, str, str, int]]:
    """(pid, protocol, address, port) of every listening TCP socket and bound, unconnected UDP socket ``pids`` hold."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    out = []
    for proto, state in (("tcp", _TCP_LISTEN), ("tcp6", _TCP_LISTEN), ("udp", _UDP_UNCONNECTED),
                         ("udp6", _UDP_UNCONNECTED)):
        try:
            lines = Path("/proc/net", proto).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, st, inode = f[1], f[3], int(f[9])
            if st == state and inode in owner:
                addr, port = local.split(":")
                out.append((owner[inode], proto, _address(addr), int(port, 16)))
    return sorted(set(out))


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def not_loopback(sockets: list[tuple[int, str, str, int]]) -> list[str]:
    """The sockets (as readable lines, with the process's command) that are not bound to a loopback address."""
    bad = []
    for pid, proto, addr, port in sockets:
        if not is_loopback(addr):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
            except OSError:
                cmd = "?"
            bad.append(f"{proto} {addr}:{port} pid {pid} ({cmd})")
    return bad


# --------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("family,host", [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::"),
                                         (socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_listening_sees_where_a_process_listens(family: socket.AddressFamily, host: str) -> None:
    code = (f"import socket, sys; s = socket.socket({int(family)}); s.bind(({host!r}, 0)); s.listen(); "
            f"print(s.getsockname()[1], flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        found = listening([proc.pid])
        assert [(p, a, n) for p, _, a, n in found] == [(proc.pid, str(ipaddress.ip_address(host)), port)]
        assert bool(not_loopback(found)) == (host in ("0.0.0.0", "::"))
    finally:
        proc.kill()
        proc.wait()


def test_raygenre_local_ray_listens_on_loopback_only(ray_local: None) -> None:
    """``ensure_ray``'s own local start (``ray.init``): the driver, GCS, raylet, dashboard, agents, workers."""
    import ray

    @ray.remote
    def ping() -> int:
        return os.getpid()

    worker = ray.get(ping.remote())  # at least one worker process is up
    node = ray._private.worker._global_node
    pids = descendants(os.getpid())
    for infos in node.all_processes.values():
        for info in infos:
            pids |= descendants(info.process.pid)
    assert worker in pids
    sockets = listening(pids)
    gcs_port = int(node.gcs_address.rsplit(":", 1)[1])
    assert (node.node_ip_address, gcs_port) == ("127.0.0.1", gcs_port)
    assert any(port == gcs_port for _, _, _, port in sockets), sockets  # the helper sees the GCS: the right tree
    assert len(sockets) >= 5, sockets
    assert not not_loopback(sockets), "listening beyond loopback:\n" + "\n".join(not_loopback(sockets))
