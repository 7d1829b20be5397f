"""The lag monitor: one daemon thread per process that measures replicas' lag.

Requests without a position token never wrote, so they cannot miss their own
writes; but a replica minutes behind would serve them data far older than
other clients see. Measuring that per request would cost each read a round
trip, so a background thread measures instead, over connections of its own,
and requests only read the last measurement (``Replica.within``).

The thread is the delicate part of the package around ``fork()``:

* it starts with the first unit of work a process routes, so a pre-forking
  master that imports the application and serves nothing never runs it (and
  never forks while the thread is inside the driver);
* a fork through Python waits for a measurement under way to end
  (``os.register_at_fork``), so no child inherits a lock the driver or
  OpenSSL held half-way;
* a forked child drops the parent's monitor connections without closing
  them, makes its locks anew, and starts its own thread if the parent ran
  one;
* it ends after 30 s without a routed unit, and holds the replicas weakly, so
  a ``Replicas`` object that is dropped takes its monitor connections along.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

from .._fork import around_forks, on_new_process
from .health import Replica

__all__ = ["IDLE", "LagMonitor", "monitor"]

logger = logging.getLogger("wsgi_sqla")

#: Seconds without a routed unit after which the lag monitor's thread ends.
IDLE = 30.0


class LagMonitor:
    """The thread that measures the watched replicas, each at its own bound's pace."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: held while measuring, and by a fork (os.register_at_fork) while it forks.
        self.measuring = threading.Lock()
        self.fork_holds = False
        self.replicas: weakref.WeakSet[Replica] = weakref.WeakSet()
        self.started = False
        #: monotonic time of the last routed unit; the thread ends after IDLE without one.
        self.last_used = 0.0

    def watch(self, replicas: Iterable[Replica]) -> None:
        """Measure ``replicas`` from now on, each over a pool of its own."""
        with self.lock:
            for replica in replicas:
                if replica.monitor_pool is None:
                    # A list, so that after a fork the finalizer closes the child's pool only.
                    replica.monitor_pool = [replica.engine.pool.recreate()]
                    weakref.finalize(replica, _dispose_monitor_pool, replica.monitor_pool)
                self.replicas.add(replica)

    def used(self) -> None:
        """A unit was routed: keep the thread alive, or start it."""
        self.last_used = time.monotonic()
        if not self.started:
            self.ensure_running()

    def ensure_running(self) -> None:
        if self.started:
            return
        with self.lock:
            if self.started:
                return
            self.started = True
            threading.Thread(target=self.run, name="wsgi_sqla replica lag", daemon=True).start()

    def run(self) -> None:
        while True:
            with self.lock:
                replicas = list(self.replicas)
                # Idle: no thread left running in a process that routes nothing
                # any more, where a fork without Python's hooks could copy it
                # half-way through the driver. The next unit starts it again.
                # started goes false before last_used is read: a unit that
                # stamps last_used and still sees started true is then seen here.
                self.started = False
                if not replicas or time.monotonic() - self.last_used > IDLE:
                    return
                self.started = True
            interval = self.measure_round(replicas)
            del replicas  # held weakly between rounds
            time.sleep(interval)

    def measure_round(self, replicas: list[Replica]) -> float:
        """Measure each of ``replicas`` once; the seconds until the next round.

        A function of its own so that no reference to a replica outlives the
        round: a loop variable left in ``run()`` held the last one measured
        (whichever the set yields last) through every sleep, and so forever.
        """
        interval = 1.0
        for replica in replicas:
            # A fork waits for this (see before_fork): a child must not
            # inherit a lock the driver or OpenSSL holds half-way.
            with self.measuring:
                replica.measure()
            interval = min(interval, replica.lag_interval())
        return interval

    def forget(self) -> None:
        """In a forked child: no thread runs, and the parent's monitor connections are not ours.

        The locks are made anew rather than taken: a fork that ran no Python
        hooks (uWSGI's) may have copied one held by a parent thread that does
        not exist here. A child of a process that ran the thread starts its
        own at once, while it has a single thread.
        """
        self.lock = threading.Lock()
        self.measuring = threading.Lock()
        self.fork_holds = False
        was_started, self.started = self.started, False
        for replica in list(self.replicas):
            replica.lock = threading.Lock()
            if replica.monitor_pool is not None:
                # Dropped, not closed: closing would end the parent's connections.
                replica.monitor_pool[0] = replica.monitor_pool[0].recreate()
        if was_started and self.replicas:
            self.ensure_running()

    def before_fork(self) -> None:
        if self.started:
            self.measuring.acquire()
            self.fork_holds = True

    def after_fork_in_parent(self) -> None:
        if self.fork_holds:
            self.fork_holds = False
            self.measuring.release()


def _dispose_monitor_pool(holder: list[Any]) -> None:
    try:
        holder[0].dispose()
    except Exception:
        logger.debug("disposing a replica lag monitor's pool failed", exc_info=True)


#: The process's one monitor, shared by every ``Replicas`` with a lag bound.
monitor = LagMonitor()
on_new_process(monitor.forget)
around_forks(monitor.before_fork, monitor.after_fork_in_parent)
