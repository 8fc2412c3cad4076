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
from modeltrail.core.projections.ddl import define_tables, schema_fingerprint
from modeltrail.core.projections.fold import Folder, Projection
from modeltrail.core.projections.runner import Progress, Runner
from modeltrail.core.projections.state import MemoryState, Overlay, SqlRows, SqlState, read_all
from modeltrail.errors import InvalidInput

T = TypeVar("T")
META_TABLE = "modeltrail_meta"


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
        if self._stored_fingerprint() == self.fingerprint:
            return
        with self.database.transaction() as tx:
            self._create_schema(tx)

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
        problems = []
        for spec in self.runner.specs:
            live = list(read_all(query, spec))
            rebuilt = sorted(fresh.rows(spec), key=spec.key_of)
            if live != rebuilt:
                problems.append(
                    f"projection table {spec.name} differs from a fresh fold of the log "
                    f"({len(live)} rows live, {len(rebuilt)} rebuilt): "
                    "run `modeltrail project --rebuild`"
                )
        return problems

    def close(self) -> None:
        self.database.dispose()

    def _stored_fingerprint(self) -> str | None:
        if not self.database.exists():
            return None
        try:
            row = self.database.reader().one(
                f"SELECT value FROM {META_TABLE} WHERE key = 'projections'"
            )
        except Exception:  # no meta table yet: a new database
            return None
        return None if row is None else str(row[0])

    def _create_schema(self, tx: Tx) -> None:
        import sqlalchemy as sa

        if tx.dialect == "postgresql":
            tx.run("SELECT pg_advisory_xact_lock(7400192)")  # one schema creator at a time
        metadata = sa.MetaData()
        define_log_table(metadata)
        sa.Table(
            META_TABLE,
            metadata,
            sa.Column("key", sa.String(64), primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )
        projection_tables = define_tables(metadata, self.runner.specs)
        metadata.create_all(tx.connection)
        if tx.one(f"SELECT value FROM {META_TABLE} WHERE key = 'kafka_projections'"):
            raise InvalidInput(
                f"database {self.database.url!r} holds the projection of a Kafka log: open it "
                "with kafka=… (MODELTRAIL_KAFKA), or use another database for an embedded log"
            )
        stored = tx.one(f"SELECT value FROM {META_TABLE} WHERE key = 'projections'")
        if stored is not None and stored[0] == self.fingerprint:
            return  # another process got here first
        if stored is not None:
            for table in reversed(projection_tables):
                table.drop(tx.connection, checkfirst=True)
            metadata.create_all(tx.connection, tables=projection_tables)
        tx.run(f"DELETE FROM {META_TABLE} WHERE key = 'projections'")
        tx.run(
            f"INSERT INTO {META_TABLE} (key, value) VALUES ('projections', ?)", (self.fingerprint,)
        )
        if stored is not None or self.log.head(tx) > 0:
            self.runner.rebuild(tx, self.log)
