"""Connecting to Ray: a running cluster when an address is given (``--address`` / ``RAY_ADDRESS``), else local.

Also quiets Ray's start-up chatter so the CLI's own output stays readable.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import ray
import ray._private.ray_constants as ray_constants

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
