"""The event log interface every backend implements, and what it promises.

1. Events are never updated or deleted.
2. ``append`` is atomic: a batch lands whole or not at all.
3. Per stream, versions are contiguous: each event's ``stream_version`` is the version
   it claims, and a claim on a version that is taken, or that leaves a gap, is refused
   with ``ConcurrencyConflict``. That claim is the optimistic-concurrency expectation.
4. Appending a batch again with the same ``event_id``s returns the first positions and
   stores nothing twice, so a writer that lost an acknowledgement can simply retry.
5. Each stream's events form a hash chain (``prev_hash``), checked by ``verify``.

The SQL log keeps 3 and 4 at write time. The Kafka log cannot (a broker takes whatever
is sent): it stores such batches, and its projector rejects stale claims and recognises
retries, in log order; writers see this contract through the projection's view of the
log (``core/projections/records.py``), whose ``append`` waits for that verdict.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from modeltrail.core.events.chain import ChainProblem, check_chains
from modeltrail.core.events.envelope import Event, StreamHead


@dataclass(frozen=True)
class LogFilter:
    """Which events a read returns; None means no restriction."""

    types: frozenset[str] | None = None
    streams: frozenset[str] | None = None
    namespace: str | None = None
    actor: str | None = None
    recorded_since: int | None = None
    recorded_until: int | None = None

    def matches(self, event: Event) -> bool:
        return (
            (self.types is None or event.type in self.types)
            and (self.streams is None or event.stream in self.streams)
            and (self.namespace is None or event.namespace == self.namespace)
            and (self.actor is None or event.actor == self.actor)
            and (self.recorded_since is None or event.recorded_at >= self.recorded_since)
            and (self.recorded_until is None or event.recorded_at <= self.recorded_until)
        )


NO_FILTER = LogFilter()


@dataclass
class VerifyReport:
    """What ``verify`` found: ``ok`` when every chain holds and every payload decodes."""

    events_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class EventLog(abc.ABC):
    """An append-only, totally ordered (per partition) log of events."""

    @abc.abstractmethod
    def append(self, events: Sequence[Event]) -> list[Event]:
        """Appends a batch atomically; returns the events with their positions."""

    @abc.abstractmethod
    def read(
        self,
        *,
        after: int | None = None,
        until: int | None = None,
        where: LogFilter = NO_FILTER,
        query: Any = None,
    ) -> Iterator[Event]:
        """Events with ``after < position <= until``, in log order."""

    @abc.abstractmethod
    def tail(
        self, *, after: int | None = None, where: LogFilter = NO_FILTER, idle_s: float | None = None
    ) -> Iterator[Event]:
        """Like ``read`` but waits for new events; stops after ``idle_s`` without one."""

    @abc.abstractmethod
    def head(self, query: Any = None) -> int:
        """The position of the last event (0 when the log is empty)."""

    @abc.abstractmethod
    def stream_head(self, stream: str) -> StreamHead:
        """The version and hash of a stream's last event."""

    def close(self) -> None:  # noqa: B027 - backends without resources need nothing here
        """Releases connections."""

    def verify(self, events: Iterable[Event] | None = None) -> tuple[int, list[ChainProblem]]:
        """Recomputes every stream's hash chain (of ``events``, else of the whole log);
        returns the events checked and the first break of each stream."""
        return check_chains(self.read() if events is None else events)


def poll_tail(
    fetch: Callable[[], Iterable[Event] | None], *, idle_s: float | None, poll_s: float
) -> Iterator[Event]:
    """The loop of every ``tail``: ``fetch`` returns the events (those the tail wants)
    appended since its last call, or None when the log has not moved. The tail stops
    after ``idle_s`` without a move (None: never) and sleeps ``poll_s`` after a call that
    found nothing (0 for a ``fetch`` that waits by itself)."""
    idle_since = time.monotonic()
    while True:
        fresh = fetch()
        if fresh is not None:
            yield from fresh
            idle_since = time.monotonic()
        elif idle_s is not None and time.monotonic() - idle_since >= idle_s:
            return
        elif poll_s:
            time.sleep(poll_s)
