"""The engines' own surface: appending a batch sealed elsewhere with a verdict, a dry run
of a command, waiting for the Kafka projection to reach a position.

The Kafka engine's projecting side needs no broker here: records are built from sealed
batches and given to ``KafkaEngine.apply`` as a projector worker would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from modeltrail.core import commands as cmd
from modeltrail.core.batch import Batch
from modeltrail.core.db import Database
from modeltrail.core.engine import Engine
from modeltrail.core.events.envelope import Event
from modeltrail.core.events.kafka_log import KafkaLog, Record, encode_record, position_of
from modeltrail.core.kafka_engine import KafkaEngine
from modeltrail.core.projections.tables import CHECKPOINTS, CheckpointRow, VersionRow
from modeltrail.core.readmodel import ReadModel
from modeltrail.core.refs import Target
from modeltrail.errors import (
    AlreadyExists,
    ConcurrencyConflict,
    InvalidInput,
    ProjectionTimeout,
    QuotaExceeded,
)
from tests.conftest import ManualClock


def _sealed(
    engine: Engine | KafkaEngine, decide: Callable[[Batch], object], actor: str = "alice"
) -> list[Event]:
    """The events a command would append, sealed against the committed projection."""

    def run(b: Batch) -> list[Event]:
        decide(b)
        return list(b.events)

    return engine.dry_run(run, actor=actor)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    made = Engine(Database(f"sqlite:///{tmp_path / 'trail.db'}"), clock=ManualClock())
    made.prepare()
    yield made
    made.close()


def _checkpoint(database: Database, partition: str = "") -> int:
    row = database.reader().one(
        "SELECT position FROM checkpoints WHERE name = 'projections' AND partition = ?",
        (partition,),
    )
    return 0 if row is None else int(row[0])


# -- the embedded engine --------------------------------------------------------------


def test_append_stores_a_sealed_batch_and_folds_it_in_one_transaction(engine: Engine) -> None:
    events = _sealed(engine, lambda b: cmd.create_model(b, "team", "m"))
    assert [e.type for e in events] == ["NamespaceCreated", "ModelCreated"]
    assert engine.log.head() == 0  # the dry run stored nothing
    placed = engine.append(events)
    assert [e.position for e in placed] == [1, 2]
    assert [e.event_id for e in placed] == [e.event_id for e in events]
    assert ReadModel(engine.database.reader()).model("team", "m") is not None
    assert _checkpoint(engine.database) == 2  # folded with its checkpoint, no catch-up needed


def test_append_of_a_retried_batch_returns_the_first_copy(engine: Engine) -> None:
    events = _sealed(engine, lambda b: cmd.create_model(b, "team", "m"))
    first = engine.append(events)
    again = engine.append(events)
    assert [(e.position, e.appended_at) for e in again] == [
        (e.position, e.appended_at) for e in first
    ]
    assert engine.log.head() == 2


def test_append_refuses_a_stale_claim_and_stores_nothing(engine: Engine) -> None:
    engine.append(_sealed(engine, lambda b: cmd.create_model(b, "team", "m")))
    one = _sealed(engine, lambda b: cmd.set_tags(b, "model", "team", "m", None, {"a": "1"}))
    two = _sealed(engine, lambda b: cmd.set_tags(b, "model", "team", "m", None, {"b": "2"}))
    engine.append(one)
    with pytest.raises(ConcurrencyConflict, match="model:team/m"):
        engine.append(two)
    assert engine.log.head() == 3


def test_append_raises_a_fold_refusal_and_leaves_nothing_behind(engine: Engine) -> None:
    engine.append(_sealed(engine, lambda b: cmd.set_quota(b, "team", 1)))
    a = _sealed(engine, lambda b: cmd.create_model(b, "team", "a"))
    b_ = _sealed(engine, lambda b: cmd.create_model(b, "team", "b"))  # decided before a landed
    engine.append(a)
    head = engine.log.head()
    with pytest.raises(QuotaExceeded, match="quota is 1"):
        engine.append(b_)  # its claims hold (another stream); the quota fold refuses it
    assert engine.log.head() == head
    assert _checkpoint(engine.database) == head
    assert [m.name for m in ReadModel(engine.database.reader()).models("team")] == ["a"]


def test_a_dry_run_returns_what_the_command_decides_and_writes_nothing(engine: Engine) -> None:
    engine.append(_sealed(engine, lambda b: cmd.create_model(b, "team", "m")))
    decided = engine.dry_run(
        lambda b: cmd.log_version(b, "team", "m", [cmd.FileEntry("w", 1, "0" * 64)]),
        actor="alice",
    )
    assert decided.index == 0
    assert engine.log.head() == 2
    assert ReadModel(engine.database.reader()).version(decided) is None
    with pytest.raises(AlreadyExists):
        engine.dry_run(lambda b: cmd.create_model(b, "team", "m"), actor="alice")


# -- the Kafka engine, without a broker -----------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def kafka_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KafkaEngine]:
    url = (
        f"sqlite:///{tmp_path / 'projection.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_database")
    )
    # no broker listens there: prepare() creates the tables and skips the topics
    log = KafkaLog("127.0.0.1:9", prefix="core", timeout_s=0.5)
    made = KafkaEngine(Database(url), log, wait_s=5)
    made.prepare()
    yield made
    made.database.dispose()


def _record(events: list[Event], offset: int, partition: str = "registry-0") -> Record:
    return KafkaLog.record(partition, offset, 1_767_225_600_000 + offset, encode_record(events))


def test_await_position_returns_once_the_checkpoint_reaches_it(kafka_engine: KafkaEngine) -> None:
    events = _sealed(kafka_engine, lambda b: cmd.create_model(b, "team", "m"))
    record = _record(events, 0)
    with pytest.raises(ProjectionTimeout, match="registry-0 up to offset 0"):
        kafka_engine.await_position("registry-0", record.position, timeout_s=0.01)
    assert kafka_engine.apply([record]) == {}
    kafka_engine.await_position("registry-0", position_of(0, len(events) - 1), timeout_s=0)
    with pytest.raises(ProjectionTimeout, match=r"registry-0 up to offset 1 .*at offset 0"):
        kafka_engine.await_position("registry-0", position_of(1, 0), timeout_s=0.01)


def test_await_applied_returns_the_placed_batch_or_raises_its_refusal(
    kafka_engine: KafkaEngine,
) -> None:
    kafka_engine.apply([_record(_sealed(kafka_engine, lambda b: cmd.set_quota(b, "team", 1)), 0)])
    a = _record(_sealed(kafka_engine, lambda b: cmd.create_model(b, "team", "a")), 1)
    b_ = _record(_sealed(kafka_engine, lambda b: cmd.create_model(b, "team", "b")), 2)
    kafka_engine.apply([a, b_])
    assert kafka_engine.await_applied(a.events) == list(a.events)
    with pytest.raises(QuotaExceeded, match="quota is 1"):
        kafka_engine.await_applied(b_.events)


def test_a_kafka_dry_run_decides_on_the_projection_and_appends_nothing(
    kafka_engine: KafkaEngine,
) -> None:
    kafka_engine.apply(
        [_record(_sealed(kafka_engine, lambda b: cmd.create_model(b, "team", "m")), 0)]
    )
    with pytest.raises(AlreadyExists):
        kafka_engine.dry_run(lambda b: cmd.create_model(b, "team", "m"), actor="alice")
    assert kafka_engine.dry_run(lambda b: len(b.events), actor="alice") == 0


def test_a_projection_reset_to_empty_sends_a_consumer_ahead_of_it_back_to_offset_0(
    kafka_engine: KafkaEngine,
) -> None:
    """A worker that had consumed up to offset 2 before the projection was emptied (a
    reset, a new database) must not fold offset 3 onto nothing: it seeks back to 0."""
    events = _sealed(kafka_engine, lambda b: cmd.create_model(b, "team", "m"))
    assert kafka_engine.apply([_record(events, 3)]) == {"registry-0": 0}
    assert kafka_engine.checkpoints() == {}
    assert kafka_engine.apply([_record(events, 0)]) == {}
    assert kafka_engine.checkpoints() == {"registry-0": position_of(0, len(events) - 1)}


def test_a_projector_transaction_reads_back_what_it_flushed(kafka_engine: KafkaEngine) -> None:
    from modeltrail.core.kafka_engine import _ProjectorState, _Remembered

    with kafka_engine.database.transaction() as tx:
        state = _ProjectorState(tx, _Remembered())
        assert kafka_engine.runner.checkpoint(state, "registry-0") == 0
        state.put(CHECKPOINTS, CheckpointRow(kafka_engine.runner.name, "registry-0", 7))
        state.flush()
        assert kafka_engine.runner.checkpoint(state, "registry-0") == 7


def test_opening_a_prepared_projection_again_writes_nothing(kafka_engine: KafkaEngine) -> None:
    again = KafkaEngine(kafka_engine.database, kafka_engine.kafka)

    def no_write() -> None:
        raise AssertionError("the projection's shape is stored already: nothing to write")

    again.database = Database(kafka_engine.database.url)
    again.database.transaction = no_write  # type: ignore[method-assign,assignment]
    again.prepare()
    again.database.dispose()


def test_a_projection_database_serves_one_log_of_one_kind(kafka_engine: KafkaEngine) -> None:
    url = kafka_engine.database.url
    with pytest.raises(InvalidInput, match="holds the projection of a Kafka log"):
        Engine(Database(url)).prepare()
    other = KafkaEngine(Database(url), KafkaLog("127.0.0.1:9", prefix="other", timeout_s=0.5))
    with pytest.raises(InvalidInput, match="prefix 'core', not 'other'"):
        other.prepare()
    other.database.dispose()


def test_a_projection_of_an_older_shape_is_recreated_and_refolded(engine: Engine) -> None:
    """The rows' shape is part of the stored fingerprint: tables of an older shape (here a
    column the version rows no longer have) are dropped, recreated and folded again."""
    engine.write(
        lambda b: cmd.log_version(b, "team", "m", [cmd.FileEntry("w", 1, "0" * 64)]),
        actor="alice",
    )
    with engine.database.transaction() as tx:
        tx.run("ALTER TABLE versions ADD COLUMN file_count INTEGER")
        tx.run("UPDATE modeltrail_meta SET value = 'older' WHERE key = 'projections'")
    reopened = Engine(Database(engine.database.url))
    reopened.prepare()
    reader = reopened.database.reader()
    columns = [row[1] for row in reader.rows("PRAGMA table_info(versions)")]
    assert columns == list(VersionRow._fields)
    assert ReadModel(reader).version(Target("team", "m", 0)) is not None
    reopened.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_snapshot_sees_one_committed_state(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'trail.db'}"
        if kind == "sqlite"
        else request.getfixturevalue("pg_database")
    )
    made = Engine(Database(url))
    made.prepare()
    try:
        with made.database.snapshot() as query:
            before = query.one("SELECT COUNT(*) FROM namespaces")
            made.write(lambda b: cmd.ensure_namespace(b, "team"), actor="alice")
            assert query.one("SELECT COUNT(*) FROM namespaces") == before
        assert made.database.reader().one("SELECT COUNT(*) FROM namespaces") == (1,)
    finally:
        made.close()


def test_a_kafka_command_reads_each_projection_row_once(
    kafka_engine: KafkaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka_engine.apply(
        [_record(_sealed(kafka_engine, lambda b: cmd.create_model(b, "team", "m")), 0)]
    )
    asked: list[tuple[str, tuple[object, ...]]] = []
    snapshot = kafka_engine.database.snapshot

    @contextlib.contextmanager
    def counted() -> Iterator[Any]:
        with snapshot() as query:

            class Counting:
                def rows(self, sql: str, params: Sequence[Any] = ()) -> Any:
                    asked.append((sql, tuple(params)))
                    return query.rows(sql, params)

                def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
                    asked.append((sql, tuple(params)))
                    return query.one(sql, params)

            yield Counting()

    monkeypatch.setattr(kafka_engine.database, "snapshot", counted)
    files = [cmd.FileEntry("w", 1, "0" * 64)]
    kafka_engine.dry_run(
        lambda b: cmd.log_version(b, "team", "m", files, aliases=["a"]), actor="al"
    )
    assert asked
    assert len(asked) == len(set(asked)), sorted(asked)
