"""The embedded engine: the SQL log and its projections in one database.

A command runs in one write transaction: read the state, emit events onto a scratch
overlay (which runs every fold rule), append the batch to the log, fold the placed
events into the projection tables, move the checkpoint, commit. Readers therefore see
their own writes at once, and a crash anywhere leaves log and projections consistent,
because they commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from modeltrail.core.batch import Batch
from modeltrail.core.db import Database, Query, Tx
from modeltrail.core.events.codec import Codec, default_codec
from modeltrail.core.events.envelope import Clock, Event, system_clock, to_micros
from modeltrail.core.events.log import EventLog
from modeltrail.core.events.seal import Sealer
from modeltrail.core.events.sql_log import SqlLog, define_log_table
from modeltrail.core.projections.catalog import default_projections
from modeltrail.core.projections.ddl import ensure_projection_schema, schema_fingerprint
from modeltrail.core.projections.fold import Folder, Projection
from modeltrail.core.projections.runner import Progress, Runner, diff_tables
from modeltrail.core.projections.state import MemoryState, Overlay, SqlRows, SqlState, read_all

T = TypeVar("T")


class RegistryEngine(Protocol):
    """What a ``Registry`` needs from an engine: the embedded ``Engine`` (SQL log and
    projections in one database) or ``kafka_engine.KafkaEngine`` (a Kafka log and a
    shared projection database)."""

    @property
    def database(self) -> Database: ...

    @property
    def log(self) -> EventLog: ...

    @property
    def runner(self) -> Runner: ...

    @property
    def codec(self) -> Codec: ...

    @property
    def clock(self) -> Clock: ...

    def prepare(self) -> None: ...

    def write(self, decide: Callable[[Batch], T], *, actor: str) -> tuple[T, list[Event]]:
        """Runs a command: decides, appends one batch; returns the result and the events."""
        ...

    def append(self, events: Sequence[Event]) -> list[Event]:
        """Appends a batch sealed elsewhere (a spool's resend) and folds it, with a verdict:
        returns the events as placed (for a retry with the same event ids, the first
        copy's) or raises the refusal as its typed error (``ConcurrencyConflict`` when
        another writer took the stream versions it claims)."""
        ...

    def dry_run(self, decide: Callable[[Batch], T], *, actor: str) -> T:
        """Runs a command's ``decide`` on a read-only view of the committed projection and
        discards what it emitted; returns its result or raises what the command would."""
        ...

    def rebuild(self, progress: Progress | None = None) -> int: ...

    def catch_up(self) -> int: ...

    def past(self, when: datetime | int, within: int | None = None) -> tuple[RegistryEngine, int]:
        """The engine reading the log as it was at a moment or position (read-only), and
        the last position it shows."""
        ...

    def drift(self, query: Query, events: Sequence[Event]) -> list[str]:
        """How the projection read through ``query`` differs from a fresh fold of the
        log (``events``: the log as just read for ``verify``)."""
        ...

    def close(self) -> None: ...


class Engine:
    """Writes commands through the SQL log and keeps the projections beside it."""

    def __init__(
        self,
        database: Database,
        *,
        clock: Clock = system_clock,
        projections: Sequence[Projection] | None = None,
        codec: Codec | None = None,
    ) -> None:
        self.database = database
        self.clock = clock
        self.codec = codec or default_codec()
        self.log = SqlLog(database, clock=clock)
        self.folder = Folder(projections or default_projections(), self.codec)
        self.runner = Runner(self.folder)
        self.sealer = Sealer(self.codec)
        self.fingerprint = schema_fingerprint(self.runner.specs)

    def prepare(self) -> None:
        """Creates missing tables; rebuilds the projections when their shape changed."""

        def rebuild(tx: Tx, recreated: bool) -> None:
            if recreated or self.log.head(tx) > 0:
                self.runner.rebuild(tx, self.log)

        ensure_projection_schema(
            self.database,
            self.runner.specs,
            key="projections",
            value=self.fingerprint,
            refused={
                "kafka_projections": f"database {self.database.url!r} holds the projection "
                "of a Kafka log: open it with kafka=… (MODELTRAIL_KAFKA), or use another "
                "database for an embedded log"
            },
            define_more=define_log_table,
            then=rebuild,
        )

    def write(self, decide: Callable[[Batch], T], *, actor: str) -> tuple[T, list[Event]]:
        """Runs a command in one transaction; returns its result and the placed events."""
        with self.database.transaction() as tx:
            self.log.lock(tx)
            last = self.log.last_placed(tx)
            state = SqlState(tx)
            self.runner.catch_up(state, self.log, last[0])
            batch = Batch(
                state,
                self.folder,
                self.sealer,
                actor=actor,
                recorded_at=self.clock(),
                query=tx,
                first_position=last[0] + 1,
            )
            result = decide(batch)
            # Sealed against the stream heads of a projection caught up under the lock: no
            # claim to check against the log (its unique constraints are the backstop).
            placed = self.log.place(batch.events, last)
            self.log.insert_placed(tx, placed)
            batch.state.commit()  # the scratch state was folded from exactly these events
            self.runner.advance(state, placed)
            state.flush()
            return result, placed

    def append(self, events: Sequence[Event]) -> list[Event]:
        """Appends a batch sealed elsewhere and folds it, in one transaction with the
        checkpoint: a refusal (a stale stream claim, or a rule a fold enforces) raises its
        typed error and leaves nothing behind; a retried batch returns its first copy."""
        if not events:
            return []
        with self.database.transaction() as tx:
            self.log.lock(tx)
            last = self.log.last_placed(tx)
            state = SqlState(tx)
            self.runner.catch_up(state, self.log, last[0])
            stored = self.log.retried(tx, events)
            if stored is not None:
                state.flush()
                return stored
            self.log.check_claims(tx, events)  # sealed elsewhere, against heads of its own
            placed = self.log.place(events, last)
            self.log.insert_placed(tx, placed)
            self.runner.apply(state, placed)  # a fold's refusal rolls the append back
            state.flush()
            return placed

    def dry_run(self, decide: Callable[[Batch], T], *, actor: str) -> T:
        with self.database.snapshot() as query:
            batch = Batch(
                Overlay(SqlRows(query)),
                self.folder,
                self.sealer,
                actor=actor,
                recorded_at=self.clock(),
                query=query,
            )
            return decide(batch)

    def rebuild(self, progress: Progress | None = None) -> int:
        """Folds the whole log again into fresh projection tables."""
        with self.database.transaction() as tx:
            return self.runner.rebuild(tx, self.log, progress)

    def catch_up(self) -> int:
        with self.database.transaction() as tx:
            state = SqlState(tx)
            position = self.runner.catch_up(state, self.log, self.log.head(tx))
            state.flush()
            return position

    def past(self, when: datetime | int, within: int | None = None) -> tuple[Engine, int]:
        position = when if isinstance(when, int) else self.log.position_at(to_micros(when))
        return self, position if within is None else min(position, within)

    def drift(self, query: Query, events: Sequence[Event]) -> list[str]:
        fresh = MemoryState()
        self.runner.apply_tolerant(fresh, events)
        return diff_tables(
            self.runner.specs,
            lambda spec: list(read_all(query, spec)),
            fresh,
            log="the log",
            rebuild="modeltrail project --rebuild",
        )

    def close(self) -> None:
        self.database.dispose()
