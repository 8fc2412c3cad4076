"""The SQL log under its engine: one claim rule for every checker, the unique constraints
as the backstop of a command's append, a retry that overlaps its first copy."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modeltrail.core import commands as cmd
from modeltrail.core.batch import Batch
from modeltrail.core.db import Database
from modeltrail.core.engine import Engine
from modeltrail.core.events.chain import check_chains
from modeltrail.core.events.codec import default_codec
from modeltrail.core.events.envelope import Draft, Event
from modeltrail.core.events.log import poll_tail
from modeltrail.core.events.seal import Sealer
from modeltrail.core.events.sql_log import SqlLog
from modeltrail.errors import ConcurrencyConflict
from tests.conftest import ManualClock


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    made = Engine(Database(f"sqlite:///{tmp_path / 'trail.db'}"), clock=ManualClock())
    made.prepare()
    yield made
    made.close()


def _sealed_onto(log: SqlLog, type_: str, stream: str, data: dict[str, Any]) -> Event:
    """An event sealed against the stream's head as the log stores it."""
    return Sealer(default_codec()).seal(
        Draft(type_, stream, "team", data),
        log.stream_head(stream),
        actor="alice",
        recorded_at=1_767_225_600_000_000,
    )


def _emitted(engine: Engine, decide: Callable[[Batch], object]) -> list[Event]:
    def run(b: Batch) -> list[Event]:
        decide(b)
        return list(b.events)

    return engine.dry_run(run, actor="alice")


def test_the_log_and_verify_state_one_claim_rule(engine: Engine) -> None:
    engine.write(lambda b: cmd.create_model(b, "team", "m"), actor="alice")
    stale = _emitted(engine, lambda b: cmd.set_tags(b, "model", "team", "m", None, {"a": "1"}))
    engine.write(lambda b: cmd.set_tags(b, "model", "team", "m", None, {"b": "2"}), actor="alice")
    with pytest.raises(ConcurrencyConflict) as refused:
        engine.log.append(stale)
    _, problems = check_chains([*engine.log.read(), stale[0]])
    assert [p.rule for p in problems] == [str(refused.value)]
    assert "claims version 1 of stream 'model:team/m', whose last version is 1" in problems[0].rule


def test_a_command_checks_no_claim_and_no_retry_against_the_log(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_here(*_: object) -> None:
        raise AssertionError("a command seals against stream heads read under the lock")

    monkeypatch.setattr(SqlLog, "check_claims", not_here)
    monkeypatch.setattr(SqlLog, "retried", not_here)
    _, placed = engine.write(lambda b: cmd.create_model(b, "team", "m"), actor="alice")
    assert [e.position for e in placed] == [1, 2]


def test_a_command_on_a_stream_the_projection_lags_is_a_concurrency_conflict(
    engine: Engine,
) -> None:
    """A stored event a fold refuses (here appended raw, as a rebuild under a stricter
    fold would refuse it) leaves the projection's stream head behind the log: the
    command's claim hits the log's unique constraint, which says so in a typed error."""
    engine.write(lambda b: cmd.create_model(b, "team", "m"), actor="alice")
    again = _sealed_onto(
        engine.log,
        "ModelCreated",
        "model:team/m",
        {"name": "m", "arch_hash": None, "description": None, "tags": {}},
    )
    engine.log.append([again])  # the log takes it: its claim follows the stored stream
    engine.catch_up()  # the registry fold refuses a second ModelCreated: recorded, no trace
    with pytest.raises(ConcurrencyConflict, match=r"model:team/m v1\b.*projections lag"):
        engine.write(
            lambda b: cmd.set_tags(b, "model", "team", "m", None, {"a": "1"}), actor="alice"
        )
    assert engine.log.head() == 3


def test_verify_of_no_events_checks_none(engine: Engine) -> None:
    engine.write(lambda b: cmd.create_model(b, "team", "m"), actor="alice")
    assert engine.log.verify([]) == (0, [])
    assert engine.log.verify() == (2, [])


def test_a_retry_overlapping_its_first_copy_returns_the_first_positions(
    pg_database: str,
) -> None:
    """PostgreSQL: the retry takes the write lock before it looks for its event ids, so
    it waits for the first copy to commit and then finds it (not a stale claim)."""
    engine = Engine(Database(pg_database))
    engine.prepare()
    try:
        batch = _emitted(engine, lambda b: cmd.create_model(b, "team", "m"))
        outcome: list[Any] = []

        def retry() -> None:
            try:
                outcome.append(engine.log.append(batch))
            except Exception as exc:
                outcome.append(exc)

        with engine.database.transaction() as tx:
            first = engine.log.append_in(tx, batch)
            thread = threading.Thread(target=retry)
            thread.start()
            deadline = time.monotonic() + 60
            while not engine.database.reader().one(
                "SELECT 1 FROM pg_locks WHERE NOT granted AND relation = 'events'::regclass"
            ):
                assert thread.is_alive() and time.monotonic() < deadline, outcome
                time.sleep(0.01)
        thread.join(timeout=60)
        assert [e.position for e in outcome[0]] == [e.position for e in first] == [1, 2]
    finally:
        engine.close()


def test_a_tail_stops_once_the_log_has_not_moved_for_idle_s() -> None:
    answers: list[list[Event] | None] = [[], [], None, []]  # []: moved, nothing wanted
    calls: list[int] = []

    def fetch() -> list[Event] | None:
        calls.append(1)
        return answers[len(calls) - 1]

    assert list(poll_tail(fetch, idle_s=0, poll_s=0)) == []
    assert len(calls) == 3  # the first call that found the log unmoved ends it
