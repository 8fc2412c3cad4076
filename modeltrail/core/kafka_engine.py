"""The team engine: commands appended to Kafka, decided and awaited on a shared projection.

A command runs as: read the projection database (a read-only snapshot, never written
back) -> emit onto a scratch overlay, which runs every fold rule and seals each event
against the stream heads the projection knows -> append the batch as one Kafka record
-> wait until the projection's checkpoint for that partition passes the record -> return,
or raise the refusal the projector recorded as its original typed error
(``ProjectionTimeout`` when no projector decides within ``wait_s``: the record is in the
log all the same). Deciding on a projection that lags behind the log is safe: a claim
sealed against stale stream heads is rejected by the projector, never applied twice.

The projection database is written only by projectors (``apply``, ``catch_up``,
``rebuild``), each transaction holding the rows, the mirrored events and the checkpoint
together. On PostgreSQL a transaction first takes an advisory lock per partition, so
workers that briefly share a partition during a rebalance (or a rebuild running beside
them) apply each record exactly once: whoever comes second sees the first one's
checkpoint and skips what it covers.

Reads are SQL on the projection database, including the log itself: the projector
mirrors every event it reads (``core/projections/records.py``), so ``events``, ``audit``,
``as_of`` and ``verify`` work without the broker and use indexes instead of topic scans.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from modeltrail import errors
from modeltrail.core.batch import Batch
from modeltrail.core.db import Database, Query, Tx
from modeltrail.core.events.codec import Codec, default_codec
from modeltrail.core.events.envelope import Clock, Event, system_clock, to_micros
from modeltrail.core.events.kafka_log import KafkaLog, Record, offset_of
from modeltrail.core.projections.catalog import default_projections
from modeltrail.core.projections.ddl import ensure_projection_schema, schema_fingerprint
from modeltrail.core.projections.fold import Folder, Projection
from modeltrail.core.projections.records import (
    LOG_EVENTS,
    RECORDS,
    LogEventRow,
    MirrorLog,
    RecordRunner,
    event_from_mirror,
)
from modeltrail.core.projections.runner import CHUNK, Progress, diff_tables
from modeltrail.core.projections.state import (
    Key,
    MemoryState,
    Overlay,
    RowT,
    Spec,
    SqlRows,
    SqlState,
    read_all,
    write_all,
)
from modeltrail.core.projections.tables import CHECKPOINTS, STREAM_HEADS
from modeltrail.errors import (
    IntegrityError,
    InvalidInput,
    LogUnavailable,
    ModeltrailError,
    ProjectionTimeout,
)

T = TypeVar("T")
META_KEY = "kafka_projections"
ROWS_IN_MEMORY = 1_000_000
"""Rows a projector worker remembers between transactions before it starts afresh."""
TABLE_IN_MEMORY = 200_000
"""The largest table a projector worker loads whole on its first read of it."""
BULK_ROWS = 200
"""From this many rows for one table, a PostgreSQL flush upserts through COPY."""
TRANSIENT = frozenset({LOG_EVENTS, RECORDS})
"""Tables a projector worker does not remember between transactions: one row per event
or record, read (if at all) in bulk per transaction."""


class KafkaEngine:
    """Writes commands to a Kafka log; a projection database decides and answers reads."""

    def __init__(
        self,
        database: Database,
        kafka: KafkaLog,
        *,
        clock: Clock = system_clock,
        projections: Sequence[Projection] | None = None,
        codec: Codec | None = None,
        wait_s: float = 30.0,
    ) -> None:
        self.database = database
        self.kafka = kafka
        self.clock = clock
        self.codec = codec or default_codec()
        self.folder = Folder(projections or default_projections(), self.codec)
        self.runner = RecordRunner(self.folder)
        self.log = MirrorLog(database, self.runner.name, append=self.append)
        self.wait_s = wait_s
        """How long a command waits for the projection to apply its record."""
        self._writing = threading.Lock()
        self._memory = _Remembered()
        self._written: dict[str, int] = {}
        from modeltrail.core.events.seal import Sealer

        self.sealer = Sealer(self.codec)
        self.fingerprint = schema_fingerprint(self.runner.specs)

    # -- setup -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Creates missing topics and projection tables.

        When the projection tables' shape changed, they are recreated empty: projector
        workers (restarted after the upgrade) then fold the log again from offset 0. An
        unreachable broker is not an error here (reads need only the database; the first
        append creates the topics, or raises ``LogUnavailable`` for the spool)."""
        with contextlib.suppress(LogUnavailable):
            self.kafka.ensure_topics()
        prefix = self.kafka.prefix

        def same_log(stored: str) -> None:
            if stored.rsplit(" ", 1)[0] != prefix:
                raise InvalidInput(
                    f"database {self.database.url!r} projects the topics of prefix "
                    f"{stored.rsplit(' ', 1)[0]!r}, not {prefix!r}: one projection database per log"
                )

        ensure_projection_schema(
            self.database,
            self.runner.specs,
            key=META_KEY,
            value=f"{prefix} {self.fingerprint}",
            refused={
                "projections": f"database {self.database.url!r} holds an embedded registry (its "
                "own SQL log): a Kafka projection needs a database of its own"
            },
            check_stored=same_log,
        )

    # -- commands --------------------------------------------------------------------

    def write(self, decide: Callable[[Batch], T], *, actor: str) -> tuple[T, list[Event]]:
        """Decides on the projection, appends one record, waits for the projection's
        verdict; returns the command's result and the events as placed in the log.

        Commands of one engine run one at a time, as on the SQL log (where the write lock
        serialises them): threads of one process never race each other for a stream
        version; other processes are the writers the projector decides between."""
        with self._writing:
            return self._write(decide, actor=actor)

    def _write(self, decide: Callable[[Batch], T], *, actor: str) -> tuple[T, list[Event]]:
        with self.database.snapshot() as query:
            batch = self._batch(query, actor)
            result = decide(batch)
        return result, self.append(batch.events)

    def dry_run(self, decide: Callable[[Batch], T], *, actor: str) -> T:
        """Runs a command's ``decide`` on a read-only view of the committed projection and
        discards what it emitted; returns its result or raises what it would raise."""
        with self.database.snapshot() as query:
            return decide(self._batch(query, actor))

    def _batch(self, query: Query, actor: str) -> Batch:
        return Batch(
            Overlay(SqlRows(query)),
            self.folder,
            self.sealer,
            actor=actor,
            recorded_at=self.clock(),
            query=query,
        )

    def append(self, events: Sequence[Event]) -> list[Event]:
        """Appends a batch sealed elsewhere (a spool's resend) as one record and waits for
        the projection's verdict: returns the events where the log keeps them (for a retry
        with the same event ids, where the first copy landed) or raises the refusal the
        projector recorded, as its typed error (``ConcurrencyConflict`` for stream
        versions another writer took first); ``ProjectionTimeout`` when no projector
        decides within ``wait_s`` (the record is in the log all the same)."""
        if not events:
            return []
        return self.await_applied(self.kafka.append(events))

    def await_applied(self, placed: Sequence[Event], timeout_s: float | None = None) -> list[Event]:
        """Waits until the projection has applied the record holding ``placed``; returns
        the events where the log keeps them (a retried batch: where it first landed) or
        raises the refusal the projector recorded."""
        partition, last = placed[0].partition, placed[-1].position
        try:
            self.await_position(partition, last, timeout_s)
        except ProjectionTimeout as exc:
            raise ProjectionTimeout(
                f"the batch at {partition} offset {offset_of(last)} is in the Kafka log, but "
                f"{exc} The batch takes effect, or is rejected, when it is projected"
            ) from None
        return self.outcome(placed, self.database.reader())

    def await_position(self, partition: str, position: int, timeout_s: float | None = None) -> None:
        """Waits until the projection's checkpoint for ``partition`` reaches ``position``
        (``timeout_s``: ``wait_s`` when None); ``ProjectionTimeout`` when it does not."""
        reader = self.database.reader()
        wait_s = self.wait_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait_s
        delay = 0.0005
        while True:
            done = reader.one(
                "SELECT position FROM checkpoints WHERE name = ? AND partition = ?",
                (self.runner.name, partition),
            )
            reached = 0 if done is None else int(done[0])
            if reached >= position:
                return
            if time.monotonic() > deadline:
                raise ProjectionTimeout(
                    f"the projection in {self.database.url!r} has not applied {partition} up "
                    f"to offset {offset_of(position)} after {wait_s:g}s (it is at offset "
                    f"{offset_of(reached)}{'' if done else ', nothing applied'}): is a "
                    "projector running (`modeltrail --kafka … --db … project`)?"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def outcome(self, placed: Sequence[Event], reader: Query) -> list[Event]:
        """What the projection made of an applied record (see ``await_applied``)."""
        first = placed[0]
        rejected = reader.one(
            "SELECT reason FROM rejections WHERE partition = ? AND position = ?",
            (first.partition, first.position),
        )
        if rejected is not None:
            raise refusal(str(rejected[0]))
        accepted = reader.one(
            "SELECT partition, position FROM log_records WHERE event_id = ?",
            (first.event_id.bytes,),
        )
        if accepted is None:
            raise IntegrityError(
                f"the batch at {first.partition} position {first.position} was projected but is "
                "neither accepted nor rejected: the projection is damaged; rebuild it"
            )
        if (accepted[0], accepted[1]) == (first.partition, first.position):
            return list(placed)
        rows = reader.rows(  # a retried batch: the log keeps the first copy
            f"SELECT {', '.join(LOG_EVENTS.columns)} FROM log_events WHERE partition = ? "
            "AND position >= ? AND position < ? ORDER BY position",
            (accepted[0], accepted[1], accepted[1] + len(placed)),
        )
        return [event_from_mirror(r) for r in rows]

    # -- projecting ------------------------------------------------------------------

    def apply(self, records: Sequence[Record]) -> dict[str, int]:
        """Applies consumed records in one transaction with their checkpoints.

        Records at or below a partition's checkpoint are skipped (already applied). A
        record past the checkpoint's successor means the consumer is ahead of the
        database (it was rebuilt or reset meanwhile): that partition stops there, and the
        offset to seek back to is returned."""
        by_partition: dict[str, list[Record]] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record)
        reseek: dict[str, int] = {}
        moved: dict[str, int] = {}
        try:
            with self.database.transaction() as tx:
                if tx.dialect == "postgresql":
                    # Not waiting for the WAL flush is safe here: a commit lost in a crash
                    # takes its checkpoint with it, and the same records fold again into the
                    # same rows and verdicts (the log, not this database, is the record).
                    tx.run("SET LOCAL synchronous_commit = off")
                state = _ProjectorState(tx, self._memory)
                mirror: list[LogEventRow] = []
                for partition in sorted(by_partition):  # one lock order: no deadlocks
                    self._lock(tx, partition)
                    done = self.runner.checkpoint(state, partition)
                    if self._written.get(partition, -1) != done:
                        # someone else moved this partition (another worker, a rebuild):
                        # rows remembered from earlier transactions may be stale
                        self._memory.forget()
                    ordered = sorted(by_partition[partition], key=lambda r: r.offset)
                    state.prefetch(STREAM_HEADS, {(e.stream,) for r in ordered for e in r.events})
                    state.prefetch(
                        RECORDS, {(r.events[0].event_id.bytes,) for r in ordered if r.events}
                    )
                    # checkpoints are positions (>= 1): 0 means nothing applied yet, so
                    # the first record wanted is at offset 0 (a consumer that read on before
                    # the projection was reset or rebuilt empty seeks back there)
                    following = offset_of(done) + 1 if done else 0
                    for record in ordered:
                        if record.offset < following:
                            continue
                        if record.offset > following:
                            reseek[partition] = following
                            break
                        self.runner.apply_record(state, record, mirror.append)
                        following = record.offset + 1
                    moved[partition] = self.runner.checkpoint(state, partition)
                written = state.written()
                state.flush()
                _insert(tx, LOG_EVENTS, mirror)
        except BaseException:
            self._memory.forget()
            self._written.clear()
            raise
        self._memory.rows.update(written)
        self._written.update(moved)
        if len(self._memory.rows) > ROWS_IN_MEMORY:
            self._memory.forget()
        return reseek

    def checkpoints(self) -> dict[str, int]:
        """The last position the projection applied, per partition."""
        return self.log.checkpoints()

    def adopt(self, partitions: dict[str, int]) -> None:
        """Takes charge of partitions at their stored checkpoints (a worker's new
        assignment): what it remembers of other partitions' rows may be stale by now."""
        self._memory.forget()
        self._written = dict(partitions)

    def catch_up(self, progress: Progress | None = None) -> int:
        """Applies every record the projection has not seen, up to the log's end now;
        returns the largest position reached. A one-shot projector (no consumer group)."""
        done = self.log.checkpoints()
        self.adopt(done)
        ranges = {
            p: (offset_of(done[p]) + 1 if done.get(p) else 0, end)
            for p, end in self.kafka.end_offsets().items()
        }
        for chunk in _chunks(self.kafka.records(ranges)):
            self.apply(chunk)
            if progress:
                progress(sum(len(r.events) for r in chunk))
        return self.log.head()

    def rebuild(self, progress: Progress | None = None) -> int:
        """Folds the whole Kafka log again, from offset 0 of every partition, into fresh
        projection tables; running projectors wait meanwhile and then carry on. The fold
        runs in memory (mirrored payloads included) and is written in bulk at the end."""
        self._memory.forget()
        self._written.clear()
        with self.database.transaction() as tx:
            names = self.kafka.partition_names()
            for partition in sorted(names):
                self._lock(tx, partition)
            ends = self.kafka.end_offsets(names)
            state = MemoryState()
            for chunk in _chunks(self.kafka.records({p: (0, end) for p, end in ends.items()})):
                self.runner.fold_records(state, chunk)
                if progress:
                    progress(sum(len(r.events) for r in chunk))
            write_all(tx, state, self.runner.specs)
            return max((self.runner.checkpoint(state, p) for p in names), default=0)

    # -- reading the past ------------------------------------------------------------

    def past(self, when: datetime | int, within: int | None = None) -> tuple[KafkaEngine, int]:
        """This engine reading the log as it was at a moment (in each partition, what
        was appended by then) or at a position (bounding every partition alike)."""
        if isinstance(when, datetime):
            cut = self.log.cut_at_time(to_micros(when))
        else:
            cut = {p: min(pos, when) for p, pos in self.log.bounds().items()}
        if within is not None:
            cut = {p: min(pos, within) for p, pos in cut.items()}
        view = copy.copy(self)
        view.log = self.log.at(cut)
        return view, view.log.head()

    def drift(self, query: Query, events: Sequence[Event]) -> list[str]:
        """Differences between the projection and a fresh fold of the Kafka log up to the
        projection's checkpoints (``events``, the accepted ones, are not enough: the
        projection also holds what it rejected)."""
        with self.database.snapshot() as snapshot:
            done = self.log.checkpoints(snapshot)
            live = {spec: list(read_all(snapshot, spec)) for spec in self.runner.specs}
        fresh = MemoryState()
        ranges = {p: (0, offset_of(pos) + 1) for p, pos in done.items()}
        self.runner.fold_records(fresh, self.kafka.records(ranges))
        return diff_tables(
            self.runner.specs,
            live.__getitem__,
            fresh,
            log="the Kafka log",
            rebuild="modeltrail --kafka … project --rebuild",
        )

    def close(self) -> None:
        self.kafka.close()
        self.database.dispose()

    # -- internals -------------------------------------------------------------------

    def _lock(self, tx: Tx, partition: str) -> None:
        if tx.dialect == "postgresql":
            digest = hashlib.sha256(f"modeltrail {self.runner.name} {partition}".encode()).digest()
            tx.run("SELECT pg_advisory_xact_lock(?)", (int.from_bytes(digest[:8], signed=True),))


def open_kafka_engine(
    database: Database, bootstrap: str, *, prefix: str, clock: Clock = system_clock
) -> KafkaEngine:
    """A prepared engine over the topics ``<prefix>.*`` at ``bootstrap``."""
    engine = KafkaEngine(database, KafkaLog(bootstrap, prefix=prefix), clock=clock)
    engine.prepare()
    return engine


class _Remembered:
    """Projection rows a projector worker remembers between its transactions.

    While a worker holds a partition it is the only writer of that partition's rows (no
    fold reads or writes rows of another partition; ``apply`` checks the stored
    checkpoints to notice any other writer, and then forgets everything). So what it read
    or wrote stays true, and a table it loaded whole answers "absent" without asking."""

    def __init__(self) -> None:
        self.rows: dict[tuple[Spec, Key], RowT | None] = {}
        self.complete: set[Spec] = set()
        self.loaded: set[Spec] = set()

    def forget(self) -> None:
        self.rows.clear()
        self.complete.clear()
        self.loaded.clear()


class _ProjectorState(SqlState):
    """A projector transaction's state over the rows its worker remembers.

    The first read of a table loads it whole when it is small enough (folds read a few
    tables again and again: stream heads, models, aliases …); larger ones are read a key
    at a time. Stream heads, and the retry table (``log_records``, one row per record,
    never remembered), are fetched in bulk for each partition's records."""

    def __init__(self, tx: Tx, memory: _Remembered) -> None:
        super().__init__(tx)
        self.memory = memory
        self.fetched: dict[tuple[Spec, Key], RowT | None] = {}
        """Rows of ``TRANSIENT`` tables fetched for this transaction only."""

    def prefetch(self, spec: Spec, keys: set[Key]) -> None:
        if spec in self.memory.complete:
            return
        into = self.fetched if spec in TRANSIENT else self.memory.rows
        (column,) = spec.key
        wanted = sorted(k for k in keys if (spec, k) not in into)
        for start in range(0, len(wanted), 1000):
            chunk = [key[0] for key in wanted[start : start + 1000]]
            into.update(((spec, (key,)), None) for key in chunk)
            found = self.tx.rows(
                f"SELECT {', '.join(spec.columns)} FROM {spec.name} "
                f"WHERE {column} IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            for row in map(spec.row._make, found):
                into[spec, spec.key_of(row)] = row

    def get(self, spec: Spec, key: Key) -> RowT | None:
        table = self.changes.get(spec)
        if table is not None and key in table:
            return table[key]
        if spec is CHECKPOINTS:  # always read: it is how other writers are noticed
            return self.base.get(spec, key)
        into = self.fetched if spec in TRANSIENT else self.memory.rows
        try:
            return into[spec, key]
        except KeyError:
            pass
        if spec not in TRANSIENT and spec not in self.memory.loaded:
            self._load(spec)
            return self.get(spec, key)
        if spec in self.memory.complete:
            return None
        found = self.tx.one(spec.select_sql, key)
        row = None if found is None else spec.row._make(found)
        into[spec, key] = row
        return row

    def _write_rows(self, spec: Spec, rows: list[RowT]) -> None:
        """On PostgreSQL a large batch for a table goes through COPY into a temporary
        table and one ``INSERT … ON CONFLICT`` (row-by-row statements cost a round trip's
        share each, and dominate a projector's time)."""
        if self.tx.dialect == "postgresql" and len(rows) >= BULK_ROWS:
            _upsert_bulk(self.tx, spec, rows)
        else:
            super()._write_rows(spec, rows)

    def written(self) -> dict[tuple[Spec, Key], RowT | None]:
        """The rows this transaction writes (None: deleted) that are worth remembering."""
        return {
            (spec, key): row
            for spec, table in self.changes.items()
            if spec not in TRANSIENT
            for key, row in table.items()
        }

    def _load(self, spec: Spec) -> None:
        self.memory.loaded.add(spec)
        order = ", ".join(spec.key)
        found = self.tx.rows(
            f"SELECT {', '.join(spec.columns)} FROM {spec.name} ORDER BY {order} "
            f"LIMIT {TABLE_IN_MEMORY + 1}"
        )
        if len(found) > TABLE_IN_MEMORY:
            return
        for row in map(spec.row._make, found):
            self.memory.rows[spec, spec.key_of(row)] = row
        self.memory.complete.add(spec)


def refusal(reason: str) -> ModeltrailError:
    """A recorded rejection (``"ClassName: message"``) as its original typed error."""
    name, _, message = reason.partition(": ")
    kind = getattr(errors, name, None)
    if isinstance(kind, type) and issubclass(kind, ModeltrailError):
        return kind(message)
    return IntegrityError(reason)


def _chunks(records: Iterator[Record]) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    count = 0
    for record in records:
        chunk.append(record)
        count += max(len(record.events), 1)
        if count >= CHUNK:
            yield chunk
            chunk, count = [], 0
    if chunk:
        yield chunk


def _upsert_bulk(tx: Tx, spec: Spec, rows: Sequence[RowT]) -> None:
    """PostgreSQL: COPY rows into a session's temporary twin of the table, then upsert
    them all with one statement (the twin empties itself at commit)."""
    twin = f"bulk_{spec.name}"
    tx.run(f"CREATE TEMPORARY TABLE IF NOT EXISTS {twin} (LIKE {spec.name}) ON COMMIT DELETE ROWS")
    _insert(tx, spec, rows, into=twin)
    columns = ", ".join(spec.columns)
    tx.run(
        f"INSERT INTO {spec.name} ({columns}) SELECT {columns} FROM {twin} "
        + spec.upsert_sql[spec.upsert_sql.index("ON CONFLICT") :]
    )
    tx.run(f"TRUNCATE {twin}")  # a second flush in the same transaction starts empty


def _insert(tx: Tx, spec: Spec, rows: Sequence[RowT], *, into: str | None = None) -> None:
    """Inserts new rows; on PostgreSQL with COPY (the mirror is most of what a projector
    writes, and COPY takes it several times faster than row-by-row INSERTs)."""
    if not rows:
        return
    if tx.dialect != "postgresql":
        tx.run_many(spec.insert_sql, rows)
        return
    driver: Any = tx.connection.connection.driver_connection
    with (
        driver.cursor() as cursor,
        cursor.copy(f"COPY {into or spec.name} ({', '.join(spec.columns)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)
