"""The event: an envelope of plain fields around Avro payload bytes.

Commands write ``Draft``s (what happened, to which stream, with which data); the
``Sealer`` turns them into ``Event``s by encoding the payload once, claiming the next
version of each stream and chaining the hashes. After that an event never changes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

Clock = Callable[[], int]
"""Returns the current UTC time in microseconds since the epoch."""


def system_clock() -> int:
    return time.time_ns() // 1000


def to_datetime(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC)


def to_micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, slots=True)
class Draft:
    """An event a command wants to record, before it has a version, time or hash."""

    type: str
    stream: str
    namespace: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Event:
    """One immutable event as stored in the log.

    ``position`` and ``appended_at`` are given by the log that stores the event;
    ``partition`` names the ordered sequence the position counts in ("" for the SQL
    log, the topic partition for Kafka).
    """

    event_id: uuid.UUID
    type: str
    stream: str
    stream_version: int
    namespace: str
    recorded_at: int
    actor: str
    prev_hash: bytes
    hash: bytes
    schema: bytes
    payload: bytes
    position: int = -1
    partition: str = ""
    appended_at: int = 0

    @property
    def data(self) -> dict[str, Any]:
        """The decoded payload (decoded on each access; keep the result if reused)."""
        from modeltrail.core.events.codec import default_codec

        return default_codec().decode(self)

    def at(self, position: int, appended_at: int, partition: str = "") -> Event:
        """This event as placed in a log (built directly: half the cost of
        ``dataclasses.replace``, and every appended event passes here)."""
        return Event(
            self.event_id,
            self.type,
            self.stream,
            self.stream_version,
            self.namespace,
            self.recorded_at,
            self.actor,
            self.prev_hash,
            self.hash,
            self.schema,
            self.payload,
            position,
            partition,
            appended_at,
        )


class StreamHead(NamedTuple):
    """The last event of a stream: its version (-1 when empty) and hash."""

    version: int
    hash: bytes


EMPTY_STREAM = StreamHead(-1, b"")
