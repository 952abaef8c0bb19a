"""Connecting to Ray: a running cluster when an address is given (``--address`` / ``RAY_ADDRESS``), else local.

Also quiets Ray's start-up chatter so the CLI's own output stays readable, and waits for a cluster that starts
its workers on demand (``wait_for_resources``: KubeRay groups at 0 replicas) instead of sizing work to its head.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray._private.ray_constants as ray_constants
from ray.autoscaler.sdk import request_resources

from raygenre.workspace import progress_bars_wanted

RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")


def _start_local(num_cpus: int | None, **kwargs: Any) -> None:
    """Start a Ray on this machine that listens on 127.0.0.1 only, with its dashboard (the State API).

    Two environment variables reach the Ray processes (they inherit this process's environment when
    ``ray.init`` spawns them) and are then removed again here, so that programs this process starts later
    (tests, `ray job`) do not mistake this Ray for theirs:

    * ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: on Linux, Ray 2.60 otherwise swaps 127.0.0.1 for the host's
      outward address, and its GCS, raylet and dashboard agent listen on every interface. This process read
      the variable when it imported Ray, hence the constant too.
    * ``RAY_API_SERVER_ADDRESS``: Ray Train's PlacementGroupCleaner (a worker) asks the State API, served by
      the dashboard, whether a trial's controller is still alive. Without the dashboard, or when a second Ray
      on the machine makes "auto" ambiguous, it cannot tell, and every trial that ASHA stops keeps its
      workers' CPUs until the next trial cannot read its data.

    A third, ``RAY_DATA_LOGGING_CONFIG`` (unless the user set one), keeps Ray Data's INFO lines in the workers
    (one "execution finished" per dataset and epoch) in ``ray-data.log`` rather than on the console.
    """
    port = _free_local_port()
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
           "RAY_DATA_LOGGING_CONFIG": os.environ.get("RAY_DATA_LOGGING_CONFIG") or str(RAY_DATA_LOGGING)}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                 logging_level=logging.WARNING, _node_ip_address="127.0.0.1", **kwargs)
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _free_local_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class QuietRayDataFilter(logging.Filter):
    """Drops Ray Data's "Progress bars disabled" notice: raygenre turns the bars off on purpose (not a terminal)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")


def _quiet_ray_data_console() -> None:
    """This process's half of ``ray_data_logging.yaml`` (Ray Data configured its logging when it was imported).

    Ray Data's INFO lines (parquet read estimates, "execution finished in") stay in its log file, off the
    console; only the console handler changes, so ``ray-data.log`` in the session folder still has everything.
    """
    for handler in logging.getLogger("ray.data").handlers:
        if handler.name == "console":
            handler.setLevel(max(handler.level, logging.WARNING))
            handler.addFilter(QuietRayDataFilter())


def ensure_ray(address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> dict[str, float]:
    """Connect to (or start) Ray once per process; return the cluster's total resources.

    ``address`` (or ``RAY_ADDRESS``) joins an existing cluster, e.g. ``auto`` or ``ray://host:10001``;
    without one a local Ray starts on this machine, bound to 127.0.0.1, its dashboard (and State API) too.
    """
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, **kwargs)
        else:
            _start_local(num_cpus, **kwargs)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress_bars_wanted()
        ctx.print_on_execution_start = False
        _quiet_ray_data_console()
    return dict(ray.cluster_resources())


# ------------------------------------------------------------------------------------ clusters that grow on demand
WAIT_POLL_SECONDS = 1.0  # how often the cluster's resources are read while waiting (one GCS call)
WAIT_LINE_SECONDS = 10.0  # one progress line this often while waiting (a job's log shows it is not hung)
# The request is sent again this often while waiting: there is one request per cluster, the last one sent, and Ray
# Data's autoscaling coordinator (a detached actor, alive for minutes after any pipeline ran) re-sends its own every
# 20 s, replacing ours (measured on 2.60: "From request_resources" in monitor.log flips to its bundles).
WAIT_ASK_SECONDS = 5.0
_requested: list[bool] = []  # non-empty once this process has asked the autoscaler (the request is released at exit)


class ClusterTooSmallError(ValueError):
    """The Ray cluster did not reach the resources a command needs before its wait ran out (exit 2)."""


def joined_cluster() -> bool:
    """True when this process uses a Ray it did not start itself: ``--address``/``RAY_ADDRESS``, ``ray://``.

    A Ray this process started (``_start_local``: ``ray.init`` without an address) is a head of fixed CPUs and no
    autoscaler, so nothing can join it on demand; any other cluster may have an autoscaler (KubeRay, ``ray up``).
    ``_global_node.head`` is set only in the process whose ``ray.init`` started the head node; a driver that
    connected has a ``connect_only`` node (``head`` False), a Ray Client driver none at all.
    """
    node = getattr(ray._private.worker, "_global_node", None)
    return not (node is not None and node.head)


def shortfall(have: dict[str, float], need: dict[str, float]) -> dict[str, float]:
    """The resources of ``need`` that ``have`` does not reach: {name: amount still missing}."""
    return {k: v - have.get(k, 0.0) for k, v in need.items() if have.get(k, 0.0) + 1e-9 < v}


def describe(resources: dict[str, float], names: tuple[str, ...] = ("CPU", "GPU")) -> str:
    """``{"CPU": 1.5, "GPU": 1}`` -> ``"1.5 CPUs, 1 GPU"`` (only ``names`` present, CPUs always)."""
    parts = []
    for name in names:
        if name in resources or name == "CPU":
            value = float(resources.get(name, 0.0))
            parts.append(f"{value:g} {name}{'' if value == 1 else 's'}")
    return ", ".join(parts)


def request_bundles(want: dict[str, float]) -> list[dict[str, float]]:
    """What to ask the autoscaler for: one ``{"GPU": 1}`` per GPU and one ``{"CPU": 1}`` per CPU, rounded up.

    Unit bundles, not one bundle of the whole amount: a bundle must fit on one node, and a request of one
    ``{"CPU": 3}`` bundle is infeasible on a cluster of 2-CPU workers, while three 1-CPU bundles get two of them.
    """
    gpus = math.ceil(float(want.get("GPU", 0.0)) - 1e-9)
    cpus = math.ceil(float(want.get("CPU", 0.0)) - 1e-9)
    return [{"GPU": 1.0}] * gpus + [{"CPU": 1.0}] * cpus


def _ask_autoscaler(bundles: list[dict[str, float]]) -> None:
    """``request_resources``: the autoscaler (v1 or v2, whichever the cluster runs) scales up to fit ``bundles``.

    The request stays until replaced, and keeps the nodes it needs from being scaled down as idle (between the
    wait and the first tasks), so it is withdrawn (an empty request) when this process exits. Ray Data's own
    requests (its autoscaling coordinator) replace it too, once a pipeline runs: by then the run's tasks and
    actors hold the nodes.
    """
    request_resources(bundles=bundles)
    if not _requested:
        _requested.append(True)
        atexit.register(_release_autoscaler)  # after ray.init's own atexit hook: runs before ray.shutdown


def _release_autoscaler() -> None:
    """Withdraw this process's autoscaler request (best effort: Ray may already be gone)."""
    with contextlib.suppress(Exception):
        if ray.is_initialized():
            request_resources(bundles=[])


def wait_for_resources(need: dict[str, float], timeout_s: float, what: str, *,
                       want: dict[str, float] | None = None, setting: str | None = None,
                       autoscale: bool | None = None, resources: Callable[[], dict[str, float]] | None = None,
                       ask: Callable[[list[dict[str, float]]], None] | None = None,
                       clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep) -> dict[str, float]:
    """The cluster's total resources once they reach ``need`` (or at once, when they already do); ``what`` names the
    command in the lines it prints.

    On a cluster this process joined (``joined_cluster``; ``autoscale`` overrides the check) whose resources fall
    short, the autoscaler is asked for ``want`` (default ``need``: ``request_bundles``; again every
    ``WAIT_ASK_SECONDS``, as another requester may have replaced it) and the wait goes on, with a
    line on stderr every ``WAIT_LINE_SECONDS``, up to ``timeout_s``; then ``ClusterTooSmallError`` names ``setting``
    (the config key of the timeout). On a Ray this process started, or with ``timeout_s`` 0, the resources are
    returned as they are: the caller's planner refuses what cannot run, as it did before.
    ``resources``/``ask``/``clock``/``sleep`` default to Ray (``ray.cluster_resources``, ``request_resources``)
    and real time; the unit tests pass their own.
    """
    read = resources or (lambda: dict(ray.cluster_resources()))
    have = read()
    if not shortfall(have, need):
        return have
    if timeout_s <= 0 or not (joined_cluster() if autoscale is None else autoscale):
        return have
    ask = ask or _ask_autoscaler
    bundles = request_bundles(want or need)
    ask(bundles)
    start = last_ask = clock()
    last_line = None
    while shortfall(have, need):
        now = clock()
        if now - last_ask >= WAIT_ASK_SECONDS:
            ask(bundles)
            last_ask = now
        if now - start >= timeout_s:
            raise ClusterTooSmallError(
                f"{what}: the Ray cluster has {describe(have)} and did not reach the {describe(need)} needed within "
                f"{timeout_s:g} s of asking its autoscaler for workers. Does it autoscale (KubeRay: "
                f"enableInTreeAutoscaling and a worker group with maxReplicas > 0), with room for this? Raise "
                f"{setting or 'the wait'} to wait longer, or give the cluster more workers.")
        if last_line is None or now - last_line >= WAIT_LINE_SECONDS:
            print(f"{what}: waiting for the cluster to start workers: have {describe(have)} / need "
                  f"{describe(need)} (autoscaler asked)", file=sys.stderr, flush=True)
            last_line = now
        sleep(WAIT_POLL_SECONDS)
        have = read()
    print(f"{what}: the cluster has {describe(have)}: starting", file=sys.stderr, flush=True)
    return have
