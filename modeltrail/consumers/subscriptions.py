"""Durable subscriptions: a named group reads the log and remembers what it handled.

A ``Subscription`` hands out events one by one (``poll`` or iteration) and ``commit``
stores how far the group got. A new subscription of the same group resumes right after
its last commit, so delivery is at least once: whatever was handed out but not
committed when a consumer stopped is handed out again, with the same ``event_id`` for
the handler to recognise it.

The subscription filters (types, a model or registered model, an alias); where the
events come from and where the committed position is kept is a ``Feed``:

- ``SqlFeed`` reads the SQL log from its position and keeps one row per group in
  ``subscription_cursors``, a table of its own beside the log. It is not a projection
  table, since a rebuild replaces those wholesale and a cursor is not derived from the
  log. The cursor only moves forward, and a group is meant to be read by one process at
  a time (two would each see every event).
- ``KafkaFeed`` (``consumers/kafka_feed.py``) follows a Kafka log as a consumer group
  whose committed offsets are the cursor; it hands out only what the projection accepted,
  and a commit can stop in the middle of an append batch (the offset commit's metadata
  says how many of that record's events were handled). Processes of one group share the
  partitions between them.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from modeltrail.core.db import Database
from modeltrail.core.events.envelope import Clock, Event, system_clock, to_datetime
from modeltrail.core.events.log import LogFilter
from modeltrail.core.refs import model_stream, registered_stream
from modeltrail.core.sidetables import ensure_table
from modeltrail.errors import InvalidInput, ModeltrailError

if TYPE_CHECKING:
    import sqlalchemy as sa

    from modeltrail.core.engine import RegistryEngine
    from modeltrail.core.events.sql_log import SqlLog

ALIAS_TYPES = frozenset({"AliasMoved", "AliasRemoved"})
Start = Literal["earliest", "latest"]
CURSORS_TABLE = "subscription_cursors"
_PAGE = 1000


def event_document(event: Event) -> dict[str, Any]:
    """An event as plain JSON-ready data: the envelope and, when decodable, the payload."""
    try:
        data: Any = event.data
    except ModeltrailError as exc:
        data = {"undecodable": str(exc)}
    document: dict[str, Any] = {"position": event.position}
    if event.partition:  # Kafka: the position counts within this partition
        document["partition"] = event.partition
    return document | {
        "event_id": str(event.event_id),
        "type": event.type,
        "stream": event.stream,
        "stream_version": event.stream_version,
        "namespace": event.namespace,
        "actor": event.actor,
        "recorded_at": to_datetime(event.recorded_at).isoformat(),
        "hash": event.hash.hex(),
        "prev_hash": event.prev_hash.hex(),
        "data": _jsonable(data),
    }


def _jsonable(value: Any) -> Any:
    """Payload values as JSON can hold them: bytes fields (packed arrays) as hex."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class EventFilter:
    """Which events a consumer wants. ``owner`` is (namespace, model or registered model):
    its events, those of its runs, and its aliases; ``alias`` keeps only moves and
    removals of that alias."""

    types: frozenset[str] | None = None
    owner: tuple[str, str] | None = None
    alias: str | None = None
    excluded: frozenset[str] = frozenset()
    """Types never matched, whatever ``types`` says (a webhook's own event types)."""

    @classmethod
    def build(
        cls,
        *,
        types: Iterable[str] | None = None,
        owner: tuple[str, str] | None = None,
        alias: str | None = None,
        known_types: Iterable[str] = (),
    ) -> EventFilter:
        chosen = None if types is None else frozenset(types)
        if isinstance(types, str):
            chosen = frozenset([types])
        known = frozenset(known_types)
        if chosen is not None and known and not chosen <= known:
            unknown = ", ".join(sorted(chosen - known))
            raise InvalidInput(
                f"event type {unknown} is unknown: known types are {', '.join(sorted(known))}"
            )
        if alias is not None:
            if chosen is None:
                chosen = ALIAS_TYPES
            elif not chosen <= ALIAS_TYPES:
                raise InvalidInput(
                    f"types {sorted(chosen)} cannot be combined with alias={alias!r}: an alias "
                    f"filter only matches {' and '.join(sorted(ALIAS_TYPES))} events"
                )
        return cls(chosen, owner, alias)

    @property
    def log_filter(self) -> LogFilter:
        """The part of the filter the log can apply itself."""
        return LogFilter(types=self.types)

    def matches(self, event: Event) -> bool:
        if event.type in self.excluded:
            return False
        if self.types is not None and event.type not in self.types:
            return False
        if self.owner is not None:
            ns, name = self.owner
            if event.stream not in (model_stream(ns, name), registered_stream(ns, name)) and (
                not event.stream.startswith(f"run:{ns}/{name}/")
            ):
                return False
        if self.alias is not None:
            if event.type not in ALIAS_TYPES:
                return False
            try:
                return bool(event.data["alias"] == self.alias)
            except ModeltrailError:
                return False
        return True

    def describe(self) -> str:
        parts = []
        if self.alias is not None:
            parts.append(f"alias {self.alias!r}")
        if self.owner is not None:
            parts.append(f"of {self.owner[0]}/{self.owner[1]}")
        if self.types is not None and not (self.alias is not None and self.types == ALIAS_TYPES):
            parts.append(f"types {', '.join(sorted(self.types))}")  # an alias implies its types
        return " ".join(parts) or "every event"


class Feed(Protocol):
    """Where a subscription's events come from and where its progress is kept."""

    def poll(self, timeout_s: float | None, stop: threading.Event) -> list[Event]:
        """Events past those already returned, in log order; [] after ``timeout_s`` (None:
        wait until there are some) or once ``stop`` is set."""

    def mark(self, event: Event) -> None:
        """The subscription has dealt with ``event``: a commit now covers it."""

    def mark_all(self) -> None:
        """Everything returned so far, and everything scanned past, has been dealt with."""

    def commit(self) -> None:
        """Stores the marked progress durably."""

    def rewind(self) -> None:
        """Goes back to the last committed progress (what is handed out next is re-read)."""

    @property
    def committed(self) -> int:
        """The last committed position (for display; 0 when nothing was committed)."""

    @property
    def place(self) -> str:
        """Where the committed progress stands, in words (for display)."""

    def close(self) -> None: ...


class Cursors(Protocol):
    """Where a ``SqlFeed`` keeps its groups' committed positions."""

    def load(self, group: str) -> int | None:
        """The group's committed position; None for a group never seen."""

    def save(self, group: str, position: int, actor: str = "") -> None:
        """Stores the group's committed position (never moving it backwards)."""


class SqlCursors:
    """One committed position per group, in a table beside the SQL log."""

    def __init__(self, database: Database, clock: Clock = system_clock) -> None:
        self.database = database
        self.clock = clock
        ensure_table(database, define_cursors_table)

    def load(self, group: str) -> int | None:
        row = self.database.reader().one(
            f"SELECT position FROM {CURSORS_TABLE} WHERE group_name = ?", (group,)
        )
        return None if row is None else int(row[0])

    def save(self, group: str, position: int, actor: str = "") -> None:
        """Moves the group's cursor to ``position``, never backwards."""
        with self.database.transaction() as tx:
            tx.run(
                f"INSERT INTO {CURSORS_TABLE} (group_name, position, committed_at, committed_by) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (group_name) DO UPDATE SET "
                "position = excluded.position, committed_at = excluded.committed_at, "
                "committed_by = excluded.committed_by "
                f"WHERE excluded.position >= {CURSORS_TABLE}.position",
                (group, position, self.clock(), actor),
            )


def define_cursors_table(metadata: sa.MetaData) -> sa.Table:
    import sqlalchemy as sa

    return sa.Table(
        CURSORS_TABLE,
        metadata,
        sa.Column("group_name", sa.String(256), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("committed_at", sa.BigInteger, nullable=False),
        sa.Column("committed_by", sa.String(256), nullable=False),
    )


class SqlFeed:
    """A subscription's feed over the SQL log, with its cursor in ``cursors``
    (``subscription_cursors`` for a subscription)."""

    def __init__(
        self,
        log: SqlLog,
        cursors: Cursors,
        group: str,
        where: LogFilter,
        *,
        start: Start = "earliest",
        actor: str = "",
        poll_s: float = 0.005,
    ) -> None:
        self.log = log
        self.cursors = cursors
        self.group = group
        self.where = where
        self.actor = actor
        self.poll_s = poll_s
        committed = cursors.load(group)
        if committed is None:
            # a new group: store where it starts, so that events landing before its first
            # commit are not skipped by a restart
            committed = 0 if start == "earliest" else log.head()
            cursors.save(group, committed, actor)
        self._committed = committed
        self._read_to = committed
        self._mark = committed

    @property
    def committed(self) -> int:
        return self._committed

    @property
    def place(self) -> str:
        return f"after position {self._committed}"

    def poll(self, timeout_s: float | None, stop: threading.Event) -> list[Event]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not stop.is_set():
            head = self.log.head()
            if head > self._read_to:
                page = list(
                    itertools.islice(
                        self.log.read(after=self._read_to, until=head, where=self.where), _PAGE
                    )
                )
                self._read_to = page[-1].position if len(page) == _PAGE else head
                if page:
                    return page
                continue
            if deadline is not None and time.monotonic() >= deadline:
                break
            wait = self.poll_s
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
            stop.wait(max(wait, 0.0))
        return []

    def mark(self, event: Event) -> None:
        self._mark = max(self._mark, event.position)

    def mark_all(self) -> None:
        self._mark = max(self._mark, self._read_to)

    def commit(self) -> None:
        if self._mark > self._committed:
            self.cursors.save(self.group, self._mark, self.actor)
            self._committed = self._mark

    def rewind(self) -> None:
        stored = self.cursors.load(self.group)
        self._committed = self._committed if stored is None else stored
        self._read_to = self._mark = self._committed

    def close(self) -> None:
        pass


class Subscription:
    """Events of a group's interest, in log order, each handed out until committed.

    Iterate (stops after ``timeout`` seconds without a matching event; None waits for
    ever) or call ``poll``. ``commit`` marks everything handed out so far as handled.
    Use one subscription from one thread; ``close`` may be called from any thread and
    ends a blocked iteration.
    """

    def __init__(
        self, group: str, feed: Feed, where: EventFilter, *, timeout: float | None = None
    ) -> None:
        self.group = group
        self.filter = where
        self.timeout = timeout
        self._feed = feed
        self._pending: deque[Event] = deque()
        self._closed = threading.Event()
        self.fetched = 0
        """How many events the feed has given so far, those the filter passed over included."""

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.poll(self.timeout)
            if event is None:
                return
            yield event

    def poll(self, timeout: float | None = None) -> Event | None:
        """The next matching event, or None when none arrives within ``timeout`` seconds
        (None waits until one does) or the subscription is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        polled = False
        while not self._closed.is_set():
            while self._pending:
                event = self._pending.popleft()
                self._feed.mark(event)
                if not self._pending:
                    self._feed.mark_all()
                if self.filter.matches(event):
                    return event
            self._feed.mark_all()
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if polled and remaining == 0.0:
                return None
            events = self._feed.poll(remaining, self._closed)
            self._pending.extend(events)
            self.fetched += len(events)
            polled = True
        return None

    def commit(self) -> None:
        """Marks every event handed out so far as handled: a new subscription of the group
        starts after it."""
        self._feed.commit()

    def rewind(self) -> None:
        """Hands out again everything after the last commit."""
        self._pending.clear()
        self._feed.rewind()

    @property
    def committed(self) -> int:
        return self._feed.committed

    @property
    def buffered(self) -> int:
        """How many events were fetched and not yet handed out or passed over: 0 when the
        next ``poll`` asks the feed (a good moment to commit)."""
        return len(self._pending)

    @property
    def place(self) -> str:
        """Where the group's committed progress stands: "after position 12" on the SQL log,
        "resumes at registry-0 offset 7 event 2, …" (an offset per partition) on Kafka."""
        return self._feed.place

    def close(self) -> None:
        """Stops handing out events (uncommitted ones come again to the next subscriber)."""
        self._closed.set()
        self._feed.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_feed(
    engine: RegistryEngine,
    group: str,
    where: EventFilter,
    *,
    start: Start = "earliest",
    actor: str = "",
) -> Feed:
    """The feed of subscription group ``group`` on an engine's log: a cursor row on the SQL
    log, a consumer group (``<prefix>.subscription.<group>``) on Kafka."""
    from modeltrail.core.events.sql_log import SqlLog

    if isinstance(engine.log, SqlLog):
        return SqlFeed(
            engine.log,
            SqlCursors(engine.database, engine.clock),
            group,
            where.log_filter,
            start=start,
            actor=actor,
        )
    from modeltrail.consumers.kafka_feed import KafkaFeed, subscription_group_id
    from modeltrail.core.kafka_engine import KafkaEngine

    if not isinstance(engine, KafkaEngine):
        raise InvalidInput(
            f"subscriptions follow a SQL or Kafka log: this registry's log is "
            f"{type(engine.log).__name__}"
        )
    return KafkaFeed(
        engine, subscription_group_id(engine.kafka.prefix, group), where.log_filter, start=start
    )
