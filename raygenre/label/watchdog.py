"""The model actors' restart budget: a counter actor the Predictors report to, and a driver thread that stops
the run once the actors have started too often.

Ray Data restarts a dead actor and retries its batch without bound, and Ray's own ``max_restarts`` is no way
out (with it spent, Ray Data 2.60 waits on the dead actor forever: measured). So each Predictor adds one to
``ActorStarts`` as it starts, and ``ActorWatchdog`` interrupts the driver's loop past the budget.

This module imports Ray and nothing heavy, on purpose: the counter actor's worker process imports the module its
class lives in. Defined in ``label.pipeline`` (which pulls in torch through the predictor), starting the counter
took 2.0-2.6 s per run on a 2-core machine; from here it takes 0.2-0.5 s. ``bench/label.py --quick``, one run
each: warm 45 files 13.2 s -> 9.3 s, cold 25.5 s -> 17.7 s, Ray workers' peak RSS at 500 files 6.2 -> 4.3 GiB
(with the counter also killed at the end of each run: it used to outlive the run).
"""

from __future__ import annotations

import _thread
import threading

import ray


class ActorStarts:
    """Counts model actor starts (first starts and restarts); run as a 0-CPU Ray actor by ``ActorWatchdog``."""

    def __init__(self) -> None:
        self.n = 0

    def add(self) -> int:
        self.n += 1
        return self.n

    def count(self) -> int:
        return self.n


class ActorWatchdog:
    """Stops the driver's loop (``KeyboardInterrupt`` in the main thread) once the model actors have started more
    than ``budget`` times; ``tripped`` tells that apart from a user's Ctrl-C."""

    POLL_SECONDS = 1.0

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.starts = ray.remote(num_cpus=0)(ActorStarts).remote()
        self.tripped = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="raygenre-actor-watchdog", daemon=True)

    def _watch(self) -> None:
        while not self._done.wait(self.POLL_SECONDS):
            try:
                started = ray.get(self.starts.count.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - Ray is shutting down: nothing left to watch
                return
            if started > self.budget:
                self.tripped.set()
                _thread.interrupt_main()
                return

    def __enter__(self) -> ActorWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        # The dataset that ran keeps a handle (in the Predictors' constructor arguments), so the counter would
        # outlive the run: 3 label calls in one process left 2 counter actors alive.
        ray.kill(self.starts)
