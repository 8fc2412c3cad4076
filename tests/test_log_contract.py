"""The event log contract, run against every backend.

A backend enters the suite through the ``backend`` fixture, and declares where a bad
batch is refused:

- the SQL log (SQLite, PostgreSQL) refuses a stale stream claim, a broken chain or a
  mixed retry at write time: ``append`` raises and nothing is stored;
- the Kafka log stores whatever producers send; its projector decides in log order
  (first writer wins), records the rejection, and recognises a retried batch. Writers
  see the same contract through the projection's view of the log (``KafkaEngine.log``),
  whose ``append`` returns once the projector has decided, raising its refusal.

``backend.log`` is what writers append to and readers read; ``backend.store`` is the log
as stored (the same object for SQL; the raw topics for Kafka).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modeltrail.consumers.projector import Projector
from modeltrail.core.db import Database
from modeltrail.core.engine import Engine
from modeltrail.core.events.codec import default_codec
from modeltrail.core.events.envelope import EMPTY_STREAM, Draft, Event, StreamHead
from modeltrail.core.events.kafka_log import KafkaLog
from modeltrail.core.events.log import EventLog, LogFilter
from modeltrail.core.events.seal import Sealer
from modeltrail.core.kafka_engine import KafkaEngine
from modeltrail.core.projections.fold import ANY_TYPE, Projection
from modeltrail.core.projections.runner import export
from modeltrail.core.projections.state import State
from modeltrail.core.projections.tables import STREAM_HEADS, StreamHeadRow
from modeltrail.errors import ConcurrencyConflict, IntegrityError


class Writer:
    """Seals events for a log, keeping its own view of stream heads."""

    def __init__(self) -> None:
        self.sealer = Sealer(default_codec())
        self.heads: dict[str, StreamHead] = {}
        self.clock = itertools.count(1_767_225_600_000_000)

    def events(self, stream: str, count: int, namespace: str = "ns") -> list[Event]:
        made = []
        for _ in range(count):
            draft = Draft(
                "QuotaSet", stream, namespace, {"namespace": namespace, "max_models": count}
            )
            event = self.sealer.seal(
                draft,
                self.heads.get(stream, EMPTY_STREAM),
                actor="tester",
                recorded_at=next(self.clock),
            )
            self.heads[stream] = StreamHead(event.stream_version, event.hash)
            made.append(event)
        return made


def _claim(state: State, event: Event, _data: dict[str, Any]) -> None:
    """The log's own rules (invariants 3 and 5) as a fold: contiguous versions per stream
    and an unbroken hash chain. The registry's rules are not the log's contract."""
    head = state.get(STREAM_HEADS, (event.stream,))
    version, prev_hash = (head.version, head.hash) if head else (-1, b"")
    if event.stream_version != version + 1:
        raise ConcurrencyConflict(
            f"{event.type} claims version {event.stream_version} of {event.stream!r} whose "
            f"last version is {version}"
        )
    if event.prev_hash != prev_hash:
        raise IntegrityError(f"{event.type} for {event.stream!r} does not chain to its stream")
    state.put(STREAM_HEADS, StreamHeadRow(event.stream, event.stream_version, event.hash))


CLAIMS = [Projection("claims", (STREAM_HEADS,), {ANY_TYPE: _claim})]


@dataclasses.dataclass
class Backend:
    name: str
    log: EventLog
    store: EventLog
    refuses_at_write: bool
    contiguous: bool
    """Positions are 1, 2, 3… (one global sequence) rather than per-partition numbers."""
    settle: Callable[[], None]
    """Returns once the projection has seen everything stored."""
    export: Callable[[], list[str]]
    """The projection as canonical lines."""
    replay: Callable[[], list[str]]
    """The projection rebuilt from position 0 in a fresh database, as canonical lines."""


def _sql_backend(name: str, url: str) -> Backend:
    engine = Engine(Database(url), projections=CLAIMS)
    engine.prepare()

    def export_now() -> list[str]:
        engine.catch_up()
        return list(export(engine.database.reader(), engine.runner.specs))

    def replay() -> list[str]:
        engine.rebuild()
        return list(export(engine.database.reader(), engine.runner.specs))

    return Backend(name, engine.log, engine.log, True, True, lambda: None, export_now, replay)


@contextlib.contextmanager
def _kafka_backend(bootstrap: str, prefix: str, tmp_path: Path) -> Iterator[Backend]:
    kafka = KafkaLog(bootstrap, prefix=prefix)
    engine = KafkaEngine(
        Database(f"sqlite:///{tmp_path / 'projection.db'}"), kafka, projections=CLAIMS
    )
    engine.prepare()
    projector = Projector(engine, group=f"{prefix}projector")
    worker = threading.Thread(target=projector.run, daemon=True)
    worker.start()

    def settle() -> None:
        deadline = time.monotonic() + 60
        while True:
            heads, done = kafka.heads(), engine.checkpoints()
            if all(done.get(p, 0) >= last for p, last in heads.items()):
                return
            assert time.monotonic() < deadline, f"projector stuck at {done}, log at {heads}"
            time.sleep(0.05)

    def export_now() -> list[str]:
        settle()
        return list(export(engine.database.reader(), engine.runner.specs))

    replays = itertools.count()

    def replay() -> list[str]:
        """A rebuild from offset 0 into a database of its own."""
        url = f"sqlite:///{tmp_path / f'replay-{next(replays)}.db'}"
        fresh = KafkaEngine(Database(url), KafkaLog(bootstrap, prefix=prefix), projections=CLAIMS)
        fresh.prepare()
        fresh.rebuild()
        lines = list(export(fresh.database.reader(), fresh.runner.specs))
        fresh.close()
        return lines

    try:
        yield Backend("kafka", engine.log, kafka, False, False, settle, export_now, replay)
    finally:
        projector.stop()
        worker.join(timeout=30)
        engine.close()


@pytest.fixture(params=["sqlite", "postgres", "kafka"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "kafka":
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        with _kafka_backend(bootstrap, request.getfixturevalue("kafka_prefix"), tmp_path) as made:
            yield made
        return
    if request.param == "sqlite":
        made = _sql_backend("sqlite", f"sqlite:///{tmp_path / 'log.db'}")
    else:
        made = _sql_backend("postgres", request.getfixturevalue("pg_database"))
    yield made
    made.log.close()


def _positions(events: list[Event]) -> list[int]:
    return [e.position for e in events]


def test_append_places_events_in_order(backend: Backend) -> None:
    log, writer = backend.log, Writer()
    first = log.append(writer.events("s:a", 3))
    second = log.append(writer.events("s:b", 2) + writer.events("s:a", 1))
    placed = _positions(first + second)
    assert placed == sorted(set(placed))
    if backend.contiguous:
        assert placed == [1, 2, 3, 4, 5, 6]
    assert [e.event_id for e in log.read()] == [e.event_id for e in first + second]
    assert log.head() == placed[-1]


def test_reads_start_after_a_position_and_stop_at_until(backend: Backend) -> None:
    placed = _positions(backend.log.append(Writer().events("s:a", 10)))
    assert _positions(list(backend.log.read(after=placed[2], until=placed[6]))) == placed[3:7]
    assert list(backend.log.read(after=placed[-1])) == []


def test_reads_filter_by_type_stream_and_namespace(backend: Backend) -> None:
    writer = Writer()
    backend.log.append(writer.events("s:a", 2, "one"))
    backend.log.append(writer.events("s:b", 3, "two"))
    log = backend.log
    assert len(list(log.read(where=LogFilter(streams=frozenset({"s:b"}))))) == 3
    assert len(list(log.read(where=LogFilter(namespace="one")))) == 2
    assert list(log.read(where=LogFilter(types=frozenset({"AliasMoved"})))) == []


def test_reads_page_through_long_logs(backend: Backend) -> None:
    placed = backend.log.append(Writer().events("s:a", 4500))
    assert _positions(list(backend.log.read())) == _positions(placed)


def test_stored_events_come_back_byte_for_byte(backend: Backend) -> None:
    sent = Writer().events("s:a", 3)
    backend.log.append(sent)
    for original, stored in zip(sent, backend.log.read(), strict=True):
        assert (stored.event_id, stored.hash, stored.payload, stored.prev_hash, stored.schema) == (
            original.event_id,
            original.hash,
            original.payload,
            original.prev_hash,
            original.schema,
        )


def test_retrying_a_batch_returns_the_first_positions_and_stores_nothing_twice(
    backend: Backend,
) -> None:
    batch = Writer().events("s:a", 5)
    first = backend.log.append(batch)
    again = backend.log.append(batch)
    assert _positions(again) == _positions(first)
    assert [e.event_id for e in backend.log.read()] == [e.event_id for e in batch]


def test_a_batch_mixing_stored_and_new_events_is_refused(backend: Backend) -> None:
    writer = Writer()
    batch = writer.events("s:a", 3)
    backend.log.append(batch)
    with pytest.raises(IntegrityError, match="retried"):
        backend.log.append([batch[0], *writer.events("s:b", 1)])
    assert len(list(backend.log.read())) == 3


def test_a_stale_stream_claim_is_refused_and_nothing_of_its_batch_lands(backend: Backend) -> None:
    early, late = Writer(), Writer()
    backend.log.append(early.events("s:a", 2))
    stale = late.events("s:other", 1) + late.events("s:a", 1)  # claims s:a v0 again
    with pytest.raises(ConcurrencyConflict, match="s:a"):
        backend.log.append(stale)
    assert len(list(backend.log.read())) == 2
    assert backend.log.stream_head("s:other") == EMPTY_STREAM


def test_a_gap_in_stream_versions_is_refused(backend: Backend) -> None:
    events = Writer().events("s:a", 3)
    backend.log.append(events[:1])
    with pytest.raises(ConcurrencyConflict):
        backend.log.append(events[2:])


def test_a_batch_that_does_not_chain_is_refused(backend: Backend) -> None:
    events = Writer().events("s:a", 2)
    backend.log.append(events[:1])
    with pytest.raises(IntegrityError, match="chain"):
        backend.log.append([dataclasses.replace(events[1], prev_hash=b"\x00" * 32)])


def test_the_first_claim_in_log_order_wins_and_every_replay_agrees(backend: Backend) -> None:
    early, late = Writer(), Writer()
    won = early.events("s:a", 2)
    lost = late.events("s:b", 1) + late.events("s:a", 1)  # s:a v0 again, after `won`
    backend.store.append(won)
    if backend.refuses_at_write:
        with pytest.raises(ConcurrencyConflict):
            backend.store.append(lost)
    else:  # stored as sent; the projector rejects it whole, and says why
        backend.store.append(lost)
    backend.settle()
    assert [e.event_id for e in backend.log.read()] == [e.event_id for e in won]
    live = backend.export()
    rejected = [line for line in live if line.startswith('["rejections"')]
    if not backend.refuses_at_write:
        assert len(rejected) == 2 and all("ConcurrencyConflict" in r for r in rejected)
    assert backend.replay() == live
    assert backend.replay() == live


def test_verify_passes_on_an_intact_log(backend: Backend) -> None:
    writer = Writer()
    backend.log.append(writer.events("s:a", 3) + writer.events("s:b", 2))
    assert backend.log.verify() == (5, [])


def test_tail_delivers_events_appended_later(backend: Backend) -> None:
    writer = Writer()
    start = backend.log.append(writer.events("s:a", 1))[-1].position
    later = writer.events("s:a", 3)
    received: list[Event] = []

    def consume() -> None:
        for event in backend.log.tail(after=start, idle_s=5.0):
            received.append(event)
            if len(received) == 3:
                return

    thread = threading.Thread(target=consume)
    thread.start()
    backend.log.append(later[:2])
    backend.log.append(later[2:])
    thread.join(timeout=30)
    assert [e.event_id for e in received] == [e.event_id for e in later]


def test_concurrent_appenders_never_share_a_position(backend: Backend) -> None:
    errors: list[BaseException] = []

    def append_many(name: str) -> None:
        writer = Writer()
        try:
            for _ in range(20):
                backend.log.append(writer.events(f"s:{name}", 5))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=append_many, args=(str(i),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    positions = _positions(list(backend.log.read()))
    assert len(positions) == len(set(positions)) == 400
    if backend.contiguous:
        assert positions == list(range(1, 401))
    assert backend.log.verify() == (400, [])
