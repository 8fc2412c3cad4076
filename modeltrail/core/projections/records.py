"""Projecting a Kafka log: records applied whole, retries recognised, every event mirrored.

Over Kafka the log stores whatever producers send, so this is where the log's rules
are decided, deterministically and in log order (each partition on its own; the events
of one namespace, or of one inference stream, are in one partition, and no projection
row is written from two partitions, so the order between partitions does not matter):

- a record (one append batch) is folded onto an overlay; if any fold refuses any of its
  events, the overlay is dropped and every event of the record is recorded in
  ``rejections`` with the refusal as ``"ClassName: message"``: first writer wins;
- a record whose first event id was accepted before is a retry: when it is exactly that
  batch it changes nothing (``duplicate``), otherwise it is rejected;
- every event read, whatever became of it, is mirrored into ``log_events`` with its
  status, so reads (events, audit, as_of, verify) are SQL on the projection database
  and never need the broker;
- the checkpoint (last position applied, per partition) is a row of the same state.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from modeltrail.core.db import Database, Query, Row
from modeltrail.core.events.envelope import EMPTY_STREAM, Event, StreamHead
from modeltrail.core.events.kafka_log import Record
from modeltrail.core.events.log import NO_FILTER, EventLog, LogFilter, poll_tail
from modeltrail.core.events.sql_log import _filter_sql, _row, event_from_row
from modeltrail.core.projections.runner import Runner
from modeltrail.core.projections.state import MemoryState, Spec, State
from modeltrail.core.projections.tables import CHECKPOINTS, CheckpointRow
from modeltrail.errors import IntegrityError, ModeltrailError, ReadOnly

ACCEPTED, REJECTED, DUPLICATE = "accepted", "rejected", "duplicate"


class LogEventRow(NamedTuple):
    partition: str
    position: int
    event_id: bytes
    type: str
    stream: str
    stream_version: int
    namespace: str
    recorded_at: int
    appended_at: int
    actor: str
    prev_hash: bytes
    hash: bytes
    schema: bytes
    payload: bytes
    status: str


class RecordRow(NamedTuple):
    event_id: bytes
    partition: str
    position: int
    event_count: int
    last_hash: bytes


LOG_EVENTS = Spec("log_events", LogEventRow, ("partition", "position"), (("stream",),))
RECORDS = Spec("log_records", RecordRow, ("event_id",))
"""Accepted records by their first event id: how a retried batch is recognised."""

Sink = Callable[[LogEventRow], None]


def mirror_row(event: Event, status: str) -> LogEventRow:
    """An event's row in the mirror: its partition, the log's own columns, its status."""
    return LogEventRow._make((event.partition, *_row(event), status))


def event_from_mirror(row: Row) -> Event:
    """A mirror row is the partition, then the log's own columns (and the status)."""
    return event_from_row(row[1:], partition=row[0])


class RecordRunner(Runner):
    """A runner that takes Kafka records and keeps the mirror and retry table too."""

    @property
    def specs(self) -> list[Spec]:
        return [*super().specs, LOG_EVENTS, RECORDS]

    def apply_record(self, state: State, record: Record, sink: Sink) -> str:
        """Applies one record whole or rejects it whole; returns what became of it."""
        if record.error is not None or not record.events:
            self._reject_unreadable(state, record)
            return REJECTED
        events = record.events
        status = ACCEPTED
        first = events[0]
        seen: RecordRow | None = state.get(RECORDS, (first.event_id.bytes,))
        if seen is not None:
            if seen.event_count == len(events) and seen.last_hash == events[-1].hash:
                status = DUPLICATE
            else:
                self.reject(
                    state,
                    events,
                    IntegrityError(
                        f"record {record.partition}@{record.offset} repeats event id "
                        f"{first.event_id} of the batch at {seen.partition} position "
                        f"{seen.position}: a batch was retried with event ids of which only "
                        "some, or different events, are stored; a retry must resend exactly "
                        "the batch that was first sent"
                    ),
                )
                status = REJECTED
        else:
            scratch = self.scratch(state)
            try:
                self.folder.apply_all(scratch, events)
            except ModeltrailError as exc:
                scratch.rollback()
                self.reject(state, events, exc)
                status = REJECTED
            else:
                scratch.keep()
                state.put(
                    RECORDS,
                    RecordRow(
                        first.event_id.bytes,
                        record.partition,
                        first.position,
                        len(events),
                        events[-1].hash,
                    ),
                )
        for event in events:
            sink(mirror_row(event, status))
        state.put(CHECKPOINTS, CheckpointRow(self.name, record.partition, events[-1].position))
        return status

    def fold_records(self, state: MemoryState, records: Iterable[Record]) -> None:
        """Applies records to a state in memory, their events mirrored into it too (a
        rebuild, or the fresh fold ``drift`` compares with)."""

        def sink(row: LogEventRow) -> None:
            state.put(LOG_EVENTS, row)

        for record in records:
            self.apply_record(state, record, sink)

    def _reject_unreadable(self, state: State, record: Record) -> None:
        from modeltrail.core.projections.tables import REJECTIONS, RejectionRow

        reason = record.error or "IntegrityError: the record holds no events"
        state.put(REJECTIONS, RejectionRow(record.partition, record.position, b"", "", "", reason))
        state.put(CHECKPOINTS, CheckpointRow(self.name, record.partition, record.position))


class MirrorLog(EventLog):
    """The accepted events of a Kafka log, read from the projection database's mirror.

    Positions count within a partition (see ``core/events/kafka_log.py``): ``after`` and
    ``until`` bound each partition alike, and a ``cut`` (partition -> last position)
    bounds each partition on its own, which is how ``as_of`` a moment is expressed.
    Events of a partition come in log order; partitions are merged by append time.

    ``append`` (given by the engine) sends a batch to Kafka and returns once the
    projection decided: the events where the log keeps them, or the refusal raised, so
    a writer sees the same contract as from the SQL log.
    """

    PAGE = 2000

    def __init__(
        self,
        database: Database,
        runner_name: str = "projections",
        cut: Mapping[str, int] | None = None,
        *,
        append: Callable[[Sequence[Event]], list[Event]] | None = None,
    ) -> None:
        self.database = database
        self.runner_name = runner_name
        self.cut = None if cut is None else dict(cut)
        self._append = append

    def append(self, events: Sequence[Event]) -> list[Event]:
        if self._append is None:
            raise ReadOnly(
                "this view of the Kafka log ends at a cut (as_of): writes go to a registry "
                "from modeltrail.open()"
            )
        return self._append(events)

    def stream_head(self, stream: str, query: Query | None = None) -> StreamHead:
        """The last accepted event of a stream, within the cut."""
        reader = query or self.database.reader()
        head = EMPTY_STREAM
        for partition, bound in self.bounds(reader).items():
            row = reader.one(
                "SELECT stream_version, hash FROM log_events WHERE stream = ? AND partition = ? "
                "AND position <= ? AND status = 'accepted' ORDER BY stream_version DESC LIMIT 1",
                (stream, partition, bound),
            )
            if row is not None and row[0] > head.version:
                head = StreamHead(int(row[0]), bytes(row[1]))
        return head

    def checkpoints(self, query: Query | None = None) -> dict[str, int]:
        """The last position applied in each partition."""
        rows = (query or self.database.reader()).rows(
            "SELECT partition, position FROM checkpoints WHERE name = ?", (self.runner_name,)
        )
        return {str(p): int(pos) for p, pos in rows}

    def bounds(self, query: Query | None = None) -> dict[str, int]:
        """The last position readable in each partition (the cut, or the checkpoints)."""
        done = self.checkpoints(query)
        if self.cut is None:
            return done
        return {p: min(pos, done.get(p, 0)) for p, pos in self.cut.items()}

    def at(self, cut: Mapping[str, int]) -> MirrorLog:
        """This log ending at ``cut`` (intersected with any cut it already has)."""
        mine = self.bounds()
        return MirrorLog(
            self.database,
            self.runner_name,
            {p: min(pos, mine.get(p, 0)) for p, pos in cut.items()},
        )

    def cut_at_time(self, micros: int) -> dict[str, int]:
        """In each partition, the last position appended at or before ``micros``."""
        rows = self.database.reader().rows(
            "SELECT partition, MAX(position) FROM log_events WHERE appended_at <= ? "
            "GROUP BY partition",
            (micros,),
        )
        found = {str(p): int(pos) for p, pos in rows}
        return {p: found.get(p, 0) for p in self.bounds()}

    def read(
        self,
        *,
        after: int | None = None,
        until: int | None = None,
        where: LogFilter = NO_FILTER,
        query: Any = None,
    ) -> Iterator[Event]:
        reader = query or self.database.reader()
        pages = [
            self._partition(
                reader, p, after or 0, bound if until is None else min(bound, until), where
            )
            for p, bound in sorted(self.bounds(reader).items())
        ]
        yield from heapq.merge(*pages, key=lambda e: (e.appended_at, e.partition, e.position))

    def tail(
        self,
        *,
        after: int | None = None,
        where: LogFilter = NO_FILTER,
        idle_s: float | None = None,
        poll_s: float = 0.01,
    ) -> Iterator[Event]:
        seen = self.bounds() if after is None else {}

        def fetch() -> Iterator[Event] | None:
            moved = {
                p: (seen.get(p, after or 0), bound)
                for p, bound in sorted(self.bounds().items())
                if bound > seen.get(p, after or 0)
            }
            if not moved:
                return None
            seen.update((p, bound) for p, (_, bound) in moved.items())
            reader = self.database.reader()
            return (
                event
                for p, (start, bound) in moved.items()
                for event in self._partition(reader, p, start, bound, where)
            )

        yield from poll_tail(fetch, idle_s=idle_s, poll_s=poll_s)

    def head(self, query: Query | None = None) -> int:
        """The largest position of any partition: as ``until`` it includes every event."""
        return max(self.bounds(query).values(), default=0)

    def close(self) -> None:
        self.database.dispose()

    def _partition(
        self,
        reader: Query,
        partition: str,
        after: int,
        until: int,
        where: LogFilter,
    ) -> Iterator[Event]:
        """The accepted events of one partition with ``after < position <= until``."""
        filter_sql, params = _filter_sql(where)
        sql = (
            f"SELECT {', '.join(LOG_EVENTS.columns)} FROM log_events WHERE partition = ? "
            f"AND position > ? AND position <= ? AND status = 'accepted'{filter_sql} "
            f"ORDER BY position LIMIT {self.PAGE}"
        )
        position = after
        while position < until:
            rows = reader.rows(sql, [partition, position, until, *params])
            yield from map(event_from_mirror, rows)
            if len(rows) < self.PAGE:
                return
            position = rows[-1][1]
