"""Runners and states: how folds are tried, kept and written."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from modeltrail.core import commands as cmd
from modeltrail.core.batch import Batch
from modeltrail.core.db import Database, Query, Row
from modeltrail.core.engine import Engine
from modeltrail.core.events.codec import default_codec
from modeltrail.core.events.envelope import Event
from modeltrail.core.projections.epochs import evaluate, pack
from modeltrail.core.projections.fold import ANY_TYPE, Folder, Projection
from modeltrail.core.projections.runner import Runner
from modeltrail.core.projections.state import Key, RowT, Spec, State
from modeltrail.core.projections.tables import REJECTIONS
from modeltrail.core.readmodel import ReadModel
from modeltrail.core.refs import Ref, Target
from modeltrail.errors import InvalidInput
from tests.conftest import ManualClock


class SeenRow(NamedTuple):
    position: int


SEEN = Spec("seen", SeenRow, ("position",))


def _record_or_refuse(state: State, event: Event, _data: dict[str, Any]) -> None:
    state.put(SEEN, SeenRow(event.position))  # a row written without being read first
    if event.type == "Refused":
        raise InvalidInput(f"event at {event.position} is refused by rule")


class CountingState:
    """A state that is not in memory (as SqlState is not), counting the rows read."""

    def __init__(self) -> None:
        self.rows: dict[tuple[Spec, Key], RowT] = {}
        self.reads = 0

    def get(self, spec: Spec, key: Key) -> RowT | None:
        self.reads += 1
        return self.rows.get((spec, key))

    def put(self, spec: Spec, row: RowT) -> None:
        self.rows[spec, spec.key_of(row)] = row

    def delete(self, spec: Spec, key: Key) -> None:
        self.rows.pop((spec, key), None)


def _event(position: int, type_: str = "Seen") -> Event:
    return Event(uuid.uuid4(), type_, "s", position - 1, "ns", 0, "a", b"", b"", b"", b"", position)


def test_a_tolerant_fold_over_sql_reads_no_row_before_writing_it() -> None:
    runner = Runner(
        Folder([Projection("seen", (SEEN,), {ANY_TYPE: _record_or_refuse})], default_codec())
    )
    state = CountingState()
    assert runner.apply_tolerant(state, [_event(1), _event(2, "Refused"), _event(3)]) == 3
    assert state.reads == 0  # an undo journal would read each row it writes
    assert sorted(key for spec, key in state.rows if spec is SEEN) == [(1,), (3,)]
    [rejected] = [row for (spec, _), row in state.rows.items() if spec is REJECTIONS]
    assert (rejected.position, rejected.reason) == (
        2,
        "InvalidInput: event at 2 is refused by rule",
    )


class CountingQuery:
    """A query that counts the rows each table's statements return."""

    def __init__(self, query: Query) -> None:
        self.query = query
        self.returned: dict[str, int] = {}

    def _count(self, sql: str, count: int) -> None:
        table = sql.split(" FROM ", 1)[1].split(maxsplit=1)[0]
        self.returned[table] = self.returned.get(table, 0) + count

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        found = self.query.rows(sql, params)
        self._count(sql, len(found))
        return found

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        found = self.query.one(sql, params)
        self._count(sql, found is not None)
        return found


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    made = Engine(Database(f"sqlite:///{tmp_path / 'trail.db'}"), clock=ManualClock())
    made.prepare()
    yield made
    made.close()


def test_an_epoch_evaluation_reads_only_that_epochs_rows(engine: Engine) -> None:
    engine.write(lambda b: cmd.open_run(b, "team", "m", "r", {}), actor="alice")
    for n_epoch in (0, 1, 2):
        batch = {
            "dataset_type": "train",
            "n_epoch": n_epoch,
            "n_samples": 2,
            "num_classes": 2,
            "input_ids": pack("q", [0, 1]),
            "labels": pack("i", [0, 1]),
            "predictions": pack("i", [0, 0]),
            "losses": pack("f", [0.5, 0.5]),
            "confidences": pack("f", [0.9, 0.9]),
        }

        def decide(b: Batch, batch: dict[str, Any] = batch) -> None:
            cmd.record_inference(b, "team", "m", "r", batch)

        engine.write(decide, actor="alice")
    query = CountingQuery(engine.database.reader())
    assert evaluate(query, "team", "m", "r", 1).n_epoch == 1
    assert query.returned["epochs"] == 1


def test_a_registered_models_latest_reads_one_link(engine: Engine) -> None:
    for index in range(4):
        files = [cmd.FileEntry("w", 1, f"{index:064x}")]

        def decide(b: Batch, files: list[cmd.FileEntry] = files) -> None:
            target = cmd.log_version(b, "team", "m", files)
            cmd.link(b, target, "team", "reg")

        engine.write(decide, actor="alice")
    query = CountingQuery(engine.database.reader())
    assert ReadModel(query).resolve(Ref.parse("team/reg")) == Target("team", "m", 3)
    assert query.returned["links"] == 1
