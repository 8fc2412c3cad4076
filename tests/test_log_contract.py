"""The event log contract, run against every backend.

A backend enters the suite through the ``log`` fixture. The SQL log refuses a stale
stream claim at write time; a log that cannot (Kafka) leaves that to its projector.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modeltrail.core.db import Database
from modeltrail.core.engine import Engine
from modeltrail.core.events.codec import default_codec
from modeltrail.core.events.envelope import EMPTY_STREAM, Draft, Event, StreamHead
from modeltrail.core.events.log import EventLog, LogFilter
from modeltrail.core.events.seal import Sealer
from modeltrail.core.events.sql_log import SqlLog
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


def _sql_log(url: str) -> SqlLog:
    engine = Engine(Database(url))
    engine.prepare()
    return engine.log


@pytest.fixture(params=["sqlite", "postgres"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    if request.param == "sqlite":
        made = _sql_log(f"sqlite:///{tmp_path / 'log.db'}")
    else:
        made = _sql_log(request.getfixturevalue("pg_database"))
    yield made
    made.close()


def test_append_assigns_contiguous_positions_in_order(log: EventLog) -> None:
    writer = Writer()
    first = log.append(writer.events("s:a", 3))
    second = log.append(writer.events("s:b", 2) + writer.events("s:a", 1))
    assert [e.position for e in first + second] == [1, 2, 3, 4, 5, 6]
    assert [e.event_id for e in log.read()] == [e.event_id for e in first + second]
    assert log.head() == 6


def test_reads_start_after_a_position_and_stop_at_until(log: EventLog) -> None:
    writer = Writer()
    log.append(writer.events("s:a", 10))
    assert [e.position for e in log.read(after=3, until=7)] == [4, 5, 6, 7]
    assert list(log.read(after=10)) == []


def test_reads_filter_by_type_stream_and_namespace(log: EventLog) -> None:
    writer = Writer()
    log.append(writer.events("s:a", 2, "one") + writer.events("s:b", 3, "two"))
    assert len(list(log.read(where=LogFilter(streams=frozenset({"s:b"}))))) == 3
    assert len(list(log.read(where=LogFilter(namespace="one")))) == 2
    assert list(log.read(where=LogFilter(types=frozenset({"AliasMoved"})))) == []


def test_reads_page_through_long_logs(log: EventLog) -> None:
    writer = Writer()
    log.append(writer.events("s:a", 4500))
    positions = [e.position for e in log.read()]
    assert positions == list(range(1, 4501))


def test_stored_events_come_back_byte_for_byte(log: EventLog) -> None:
    writer = Writer()
    sent = writer.events("s:a", 3)
    log.append(sent)
    for original, stored in zip(sent, log.read(), strict=True):
        assert (stored.event_id, stored.hash, stored.payload, stored.prev_hash, stored.schema) == (
            original.event_id,
            original.hash,
            original.payload,
            original.prev_hash,
            original.schema,
        )


def test_retrying_a_batch_returns_the_first_positions_and_stores_nothing_twice(
    log: EventLog,
) -> None:
    writer = Writer()
    batch = writer.events("s:a", 5)
    first = log.append(batch)
    again = log.append(batch)
    assert [e.position for e in again] == [e.position for e in first]
    assert log.head() == 5


def test_a_batch_mixing_stored_and_new_events_is_refused(log: EventLog) -> None:
    writer = Writer()
    batch = writer.events("s:a", 3)
    log.append(batch)
    with pytest.raises(IntegrityError, match="retried"):
        log.append([batch[0], *writer.events("s:b", 1)])
    assert log.head() == 3


def test_a_stale_stream_claim_is_refused_and_nothing_of_its_batch_lands(log: EventLog) -> None:
    early, late = Writer(), Writer()
    log.append(early.events("s:a", 2))
    stale = late.events("s:other", 1) + late.events("s:a", 1)  # claims s:a v0 again
    with pytest.raises(ConcurrencyConflict, match="s:a"):
        log.append(stale)
    assert log.head() == 2
    assert log.stream_head("s:other") == EMPTY_STREAM


def test_a_gap_in_stream_versions_is_refused(log: EventLog) -> None:
    writer = Writer()
    events = writer.events("s:a", 3)
    log.append(events[:1])
    with pytest.raises(ConcurrencyConflict):
        log.append(events[2:])


def test_a_batch_that_does_not_chain_is_refused(log: EventLog) -> None:
    import dataclasses

    writer = Writer()
    events = writer.events("s:a", 2)
    log.append(events[:1])
    with pytest.raises(IntegrityError, match="chain"):
        log.append([dataclasses.replace(events[1], prev_hash=b"\x00" * 32)])


def test_verify_passes_on_an_intact_log(log: EventLog) -> None:
    writer = Writer()
    log.append(writer.events("s:a", 3) + writer.events("s:b", 2))
    checked, problems = log.verify()
    assert (checked, problems) == (5, [])


def test_tail_delivers_events_appended_later(log: EventLog) -> None:
    writer = Writer()
    log.append(writer.events("s:a", 1))
    later = writer.events("s:a", 3)
    received: list[Event] = []

    def consume() -> None:
        for event in log.tail(after=1, idle_s=2.0):
            received.append(event)
            if len(received) == 3:
                return

    thread = threading.Thread(target=consume)
    thread.start()
    log.append(later[:2])
    log.append(later[2:])
    thread.join(timeout=10)
    assert [e.event_id for e in received] == [e.event_id for e in later]


def test_concurrent_appenders_never_share_a_position(log: EventLog) -> None:
    errors: list[BaseException] = []

    def append_many(name: str) -> None:
        writer = Writer()
        try:
            for _ in range(20):
                log.append(writer.events(f"s:{name}", 5))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=append_many, args=(str(i),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    positions = [e.position for e in log.read()]
    assert positions == list(range(1, 401))
    assert log.verify() == (400, [])
