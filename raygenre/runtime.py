"""Connecting to Ray: a running cluster when an address is given (``--address`` / ``RAY_ADDRESS``), else local.

Also quiets Ray's start-up chatter so the CLI's own output stays readable.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray


def ensure_ray(address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> dict[str, float]:
    """Connect to (or start) Ray once per process; return the cluster's total resources.

    ``address`` (or ``RAY_ADDRESS``) joins an existing cluster, e.g. ``auto`` or ``ray://host:10001``;
    without one a local Ray starts on this machine, bound to 127.0.0.1 and without the dashboard.
    """
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                     _node_ip_address="127.0.0.1", **kwargs)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = True
        ctx.print_on_execution_start = False
    return dict(ray.cluster_resources())
