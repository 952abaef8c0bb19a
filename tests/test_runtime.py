"""The local Ray that raygenre starts: loopback only, and the State API its Train cleanup relies on works."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _listening() -> dict[str, str]:
    """{socket inode: "ip:port"} of every listening TCP socket (IPv4 and IPv6) on this machine."""
    out = {}
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A":  # TCP_LISTEN
                continue
            hexip, hexport = local.split(":")
            raw = bytes.fromhex(hexip)
            # /proc prints each 32-bit word in host (little-endian) order
            ip = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4)))
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            out[inode] = f"{ip}:{int(hexport, 16)}"
    return out


def test_local_ray_listens_on_loopback_only(ray_local: None) -> None:
    pids = _descendants(os.getpid())  # the GCS, raylet, dashboard, agents and workers of the local Ray
    assert len(pids) >= 3
    listening = _listening()
    ours = [listening[i] for pid in pids for i in _socket_inodes(pid) if i in listening]
    assert len(ours) >= 3, "found too few listening sockets of the local Ray"
    exposed = sorted(a for a in ours if not ipaddress.ip_address(a.rsplit(":", 1)[0]).is_loopback)
    assert not exposed, f"the local Ray listens beyond 127.0.0.1: {exposed}"


def test_state_api_answers_for_this_cluster(ray_local: None) -> None:
    """Ray Train's PlacementGroupCleaner asks it whether a trial's controller is alive (see runtime._start_local)."""
    import ray
    from ray.util.state import list_nodes

    @ray.remote(num_cpus=0)
    def nodes_seen_from_a_worker() -> list[str]:
        return [n.node_id for n in list_nodes()]

    assert ray.get(nodes_seen_from_a_worker.remote()) == [ray.get_runtime_context().get_node_id()]


def test_the_ray_raygenre_starts_is_never_waited_for(ray_local: None) -> None:
    """A local Ray has fixed CPUs and no autoscaler: a need it cannot meet returns at once, with nothing asked."""
    from raygenre import runtime

    assert not runtime.joined_cluster()  # this process started it (``_global_node.head``)
    asked: list[object] = []
    have = runtime.wait_for_resources({"CPU": 99.0}, 600.0, "test", ask=asked.append)
    assert have["CPU"] == 2.0 and asked == []
