"""Stopping a foreground consumer (subscriber, webhook sender, scheduler, projector) on
SIGINT and SIGTERM."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Calls ``stop`` on each SIGINT and SIGTERM, restoring the earlier handlers after."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
