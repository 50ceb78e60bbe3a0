"""Is this worker's Celery consumer consuming? And the watchdog that ends a worker that cannot
serve, so that its supervisor (``parley up``, compose's ``restart:``) replaces it.

Celery starts the consumer's steps once it is connected to the broker and stops them when the
connection is lost (then starts them again on reconnecting). :class:`ConsumerWatch`, a step of
the consumer, tells :class:`ConsumerState` both. The heartbeat reports it (``consuming``), and
:class:`Watchdog` exits the process (code :data:`EXIT_CANNOT_SERVE`) once the consumer has been
down for longer than ``PARLEY_WORKER_BROKER_TIMEOUT_S``: a brief broker loss is ridden out, a
long one (or a consumer that never came back) ends in a restart. Nothing the worker held is
lost: recovery re-runs the jobs of a worker that stopped beating.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps

log = logging.getLogger(__name__)

# The exit code of a worker that gave up: its consumer was down too long.
EXIT_CANNOT_SERVE = 3


class ConsumerState:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._consuming = False
        self._since = clock()
        self.on_change: Callable[[], None] = lambda: None

    def set(self, consuming: bool) -> None:
        with self._lock:
            changed = consuming != self._consuming
            self._consuming = consuming
            if changed:
                self._since = self._clock()
        if changed:
            self.on_change()

    @property
    def consuming(self) -> bool:
        with self._lock:
            return self._consuming

    def down_for(self) -> float:
        """Seconds since the consumer stopped (or since start, if it never ran); 0 when up."""
        with self._lock:
            return 0.0 if self._consuming else self._clock() - self._since


def watch_consumer(app: Celery, state: ConsumerState) -> None:
    """Add the step that keeps ``state`` current to ``app``'s consumer."""

    class ConsumerWatch(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, parent: Any) -> None:
            state.set(True)
            log.info("consuming from the broker")

        def stop(self, parent: Any) -> None:
            if state.consuming:
                log.warning("not consuming: the broker connection was lost or is closing")
            state.set(False)

        def shutdown(self, parent: Any) -> None:
            state.set(False)

    app.steps["consumer"].add(ConsumerWatch)


class Watchdog:
    """Ends the process once the consumer has been down for ``timeout_s``: first as Celery's
    warm shutdown (SIGTERM: running turns finish and are stored), then, if that has not ended
    the process within ``grace_s``, at once."""

    def __init__(
        self, state: ConsumerState, *, timeout_s: float, period_s: float, grace_s: float = 30.0
    ) -> None:
        self.state = state
        self.timeout_s = timeout_s
        self.period_s = period_s
        self.grace_s = grace_s
        self.gave_up = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="parley-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            down_s = self.state.down_for()
            if down_s > self.timeout_s:
                self._give_up(down_s)
                return

    def _give_up(self, down_s: float) -> None:
        self.gave_up = True
        log.error(
            "not consuming from the broker for %.0f s (PARLEY_WORKER_BROKER_TIMEOUT_S=%g): "
            "this worker cannot serve and exits with code %d, to be replaced by its supervisor",
            down_s,
            self.timeout_s,
            EXIT_CANNOT_SERVE,
        )
        os.kill(os.getpid(), signal.SIGTERM)
        if not self._stop.wait(self.grace_s):
            log.error("warm shutdown took over %g s; exiting now", self.grace_s)
            logging.shutdown()
            os._exit(EXIT_CANNOT_SERVE)
