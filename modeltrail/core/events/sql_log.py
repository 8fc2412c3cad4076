"""The event log in one SQL table (SQLite embedded, PostgreSQL for teams).

Positions are assigned by the writer holding the table's write lock (SQLite's database
lock from BEGIN IMMEDIATE; on PostgreSQL an EXCLUSIVE table lock), so positions are
contiguous and commit order equals position order: a reader tailing the log never
skips a gap that a slower transaction fills in later. The price is one writer at a
time, which a batch-oriented log pays once per batch.

The unique constraints on ``event_id`` and ``(stream, stream_version)`` are the last
line of defence: ``insert_placed`` turns a broken one into the writer's typed error.
``append`` (``append_in``) checks a batch sealed elsewhere against the stored streams
first, so its refusal names the stream and versions involved; a command that sealed
its batch against stream heads read under the write lock skips that check.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from modeltrail.core.db import Database, Query, Row, Tx
from modeltrail.core.events.chain import claim_problem
from modeltrail.core.events.envelope import EMPTY_STREAM, Clock, Event, StreamHead, system_clock
from modeltrail.core.events.log import NO_FILTER, EventLog, LogFilter, poll_tail
from modeltrail.errors import ConcurrencyConflict, IntegrityError, ModeltrailError

if TYPE_CHECKING:
    import sqlalchemy as sa

COLUMNS = (
    "position, event_id, type, stream, stream_version, namespace, recorded_at, "
    "appended_at, actor, prev_hash, hash, schema, payload"
)
INSERT = f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
STREAM_HEAD = (
    "SELECT stream_version, hash FROM events WHERE stream = ? ORDER BY stream_version DESC LIMIT 1"
)
READ_PAGE = 2000


def define_log_table(metadata: sa.MetaData) -> sa.Table:
    import sqlalchemy as sa

    big = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PRIMARY KEY = rowid
    return sa.Table(
        "events",
        metadata,
        sa.Column("position", big, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.LargeBinary(16), nullable=False, unique=True),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("stream", sa.String(512), nullable=False),
        sa.Column("stream_version", sa.BigInteger, nullable=False),
        sa.Column("namespace", sa.String(128), nullable=False),
        sa.Column("recorded_at", sa.BigInteger, nullable=False),
        sa.Column("appended_at", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary, nullable=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
        sa.Column("schema", sa.LargeBinary, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("stream", "stream_version", name="events_stream_version"),
    )


def event_from_row(row: Row, partition: str = "") -> Event:
    """An event from a row of COLUMNS (the log's table, or a mirror of it)."""
    return Event(
        uuid.UUID(bytes=bytes(row[1])),
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[8],
        bytes(row[9]),
        bytes(row[10]),
        bytes(row[11]),
        bytes(row[12]),
        row[0],
        partition,
        row[7],
    )


def _filter_sql(where: LogFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, values in (("type", where.types), ("stream", where.streams)):
        if values is not None:
            clauses.append(f"{column} IN ({', '.join('?' * len(values))})" if values else "0 = 1")
            params.extend(sorted(values))
    for column, op, value in (
        ("namespace", "=", where.namespace),
        ("actor", "=", where.actor),
        ("recorded_at", ">=", where.recorded_since),
        ("recorded_at", "<=", where.recorded_until),
    ):
        if value is not None:
            clauses.append(f"{column} {op} ?")
            params.append(value)
    return "".join(f" AND {c}" for c in clauses), params


class SqlLog(EventLog):
    """The log as the ``events`` table of a SQL database."""

    def __init__(self, database: Database, *, clock: Clock = system_clock) -> None:
        self.database = database
        self._clock = clock

    def append(self, events: Sequence[Event]) -> list[Event]:
        with self.database.transaction() as tx:
            return self.append_in(tx, events)

    def lock(self, tx: Tx) -> None:
        """Takes the log's write lock for the rest of ``tx`` (SQLite holds it from BEGIN
        IMMEDIATE already). A command takes it before reading the state it decides on,
        so that no other writer can change that state before its events land."""
        if tx.dialect == "postgresql":
            tx.run("LOCK TABLE events IN EXCLUSIVE MODE")

    def append_in(self, tx: Tx, events: Sequence[Event]) -> list[Event]:
        """``append`` inside a caller's transaction (so projections can share it): takes
        the write lock, returns the first copy of a retried batch, refuses a claim the
        stored streams do not allow, places and inserts the rest."""
        if not events:
            return []
        self.lock(tx)  # first: a retry overlapping its first copy waits for it to commit
        stored = self.retried(tx, events)
        if stored is not None:
            return stored
        self.check_claims(tx, events)
        placed = self.place(events, self.last_placed(tx))
        self.insert_placed(tx, placed)
        return placed

    def retried(self, tx: Tx, events: Sequence[Event]) -> list[Event] | None:
        """The stored first copy when ``events`` is a retried batch (its first event id is
        stored), else None; IntegrityError when only some, or other, events are stored."""
        if tx.one("SELECT position FROM events WHERE event_id = ?", (events[0].event_id.bytes,)):
            return self._already_appended(tx, events)
        return None

    def check_claims(self, tx: Tx, events: Sequence[Event]) -> None:
        """Refuses a batch whose stream claims do not follow the stored streams (see
        ``chain.claim_problem``). A writer that sealed its batch against stream heads it
        read under the write lock, in the same transaction, needs no such check."""
        heads: dict[str, StreamHead] = {}
        for event in events:
            head = heads.get(event.stream)
            problem = claim_problem(event, head or self.stream_head(event.stream, tx))
            if problem is not None:
                raise problem
            heads[event.stream] = StreamHead(event.stream_version, event.hash)

    @staticmethod
    def last_placed(tx: Tx) -> tuple[int, int]:
        """The position and append time of the last event ((0, 0) when the log is empty)."""
        last = tx.one("SELECT position, appended_at FROM events ORDER BY position DESC LIMIT 1")
        return (int(last[0]), int(last[1])) if last is not None else (0, 0)

    def place(self, events: Sequence[Event], last: tuple[int, int]) -> list[Event]:
        """The events at the positions after ``last`` (see ``last_placed``), appended now,
        and never before the last event (append times never decrease)."""
        position, appended_at = last
        appended_at = max(self._clock(), appended_at)
        return [e.at(position + i, appended_at) for i, e in enumerate(events, start=1)]

    def insert_placed(self, tx: Tx, placed: Sequence[Event]) -> None:
        """Inserts events placed after the last one by a writer holding the write lock.

        The unique constraints are the backstop for a claim nobody checked against the
        stored streams: a version that is taken raises ``ConcurrencyConflict`` (which
        also happens when the projection's stream heads lag the log, because a fold
        refused a stored event on a rebuild), a stored event id ``IntegrityError``."""
        try:
            tx.run_many(INSERT, [_row(e) for e in placed])
        except Exception as exc:
            refusal = _refusal(exc, placed)
            if refusal is None:
                raise
            raise refusal from exc

    def read(
        self,
        *,
        after: int | None = None,
        until: int | None = None,
        where: LogFilter = NO_FILTER,
        query: Query | None = None,
    ) -> Iterator[Event]:
        filter_sql, filter_params = _filter_sql(where)
        bound = "" if until is None else " AND position <= ?"
        sql = (
            f"SELECT {COLUMNS} FROM events WHERE position > ?{bound}{filter_sql} "
            f"ORDER BY position LIMIT {READ_PAGE}"
        )
        position = after or 0
        reader = query or self.database.reader()
        while True:
            params = [position, *([] if until is None else [until]), *filter_params]
            rows = reader.rows(sql, params)
            yield from map(event_from_row, rows)
            if len(rows) < READ_PAGE:
                return
            position = rows[-1][0]

    def tail(
        self,
        *,
        after: int | None = None,
        where: LogFilter = NO_FILTER,
        idle_s: float | None = None,
        poll_s: float = 0.005,
    ) -> Iterator[Event]:
        position = self.head() if after is None else after

        def fetch() -> Iterator[Event] | None:
            nonlocal position
            head, start = self.head(), position
            if head <= start:
                return None
            position = head
            return self.read(after=start, until=head, where=where)

        yield from poll_tail(fetch, idle_s=idle_s, poll_s=poll_s)

    def head(self, query: Query | None = None) -> int:
        row = (query or self.database.reader()).one("SELECT MAX(position) FROM events")
        return int(row[0]) if row and row[0] is not None else 0

    def stream_head(self, stream: str, query: Query | None = None) -> StreamHead:
        row = (query or self.database.reader()).one(STREAM_HEAD, (stream,))
        return StreamHead(row[0], bytes(row[1])) if row else EMPTY_STREAM

    def position_at(self, appended_at: int) -> int:
        """The last position appended at or before a time (appended_at never decreases)."""
        row = self.database.reader().one(
            "SELECT MAX(position) FROM events WHERE appended_at <= ?", (appended_at,)
        )
        return int(row[0]) if row and row[0] is not None else 0

    def close(self) -> None:
        self.database.dispose()

    @staticmethod
    def _already_appended(tx: Tx, events: Sequence[Event]) -> list[Event]:
        ids = [e.event_id.bytes for e in events]
        found: dict[bytes, Row] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            sql = f"SELECT {COLUMNS} FROM events WHERE event_id IN ({', '.join('?' * len(chunk))})"
            found.update((bytes(r[1]), r) for r in tx.rows(sql, chunk))
        stored = [found.get(i) for i in ids]
        if any(r is None or bytes(r[10]) != e.hash for r, e in zip(stored, events, strict=True)):
            raise IntegrityError(
                "a batch was retried with event ids of which only some, or different events, "
                "are stored: a retry must resend exactly the batch that was first sent"
            )
        return [event_from_row(r) for r in stored if r is not None]


def _row(e: Event) -> tuple[Any, ...]:
    return (
        e.position,
        e.event_id.bytes,
        e.type,
        e.stream,
        e.stream_version,
        e.namespace,
        e.recorded_at,
        e.appended_at,
        e.actor,
        e.prev_hash,
        e.hash,
        e.schema,
        e.payload,
    )


def _refusal(exc: Exception, placed: Sequence[Event]) -> ModeltrailError | None:
    """A unique constraint of the log that an INSERT broke, as the writer's error (None
    for any other failure). Recognised by the drivers' messages, which name the columns
    (SQLite) or the constraint (PostgreSQL)."""
    text = str(exc)
    if "events_stream_version" in text or "events.stream_version" in text:
        claims = ", ".join(f"{e.stream} v{e.stream_version}" for e in placed[:5])
        return ConcurrencyConflict(
            f"the log already holds a stream version this batch claims ({claims}"
            f"{', …' if len(placed) > 5 else ''}): each version is claimed once. Another "
            "writer got there first (re-read and retry), or the projections lag the log "
            "(a fold refused a stored event on a rebuild: see `modeltrail verify`)"
        )
    if "event_id" in text:
        return IntegrityError(
            "a batch holds an event id the log already stores: event ids are unique, and a "
            "retry must resend exactly the batch that was first sent"
        )
    return None
