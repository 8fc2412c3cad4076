"""Runners and states: how folds are tried, kept and written."""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

from modeltrail.core.events.codec import default_codec
from modeltrail.core.events.envelope import Event
from modeltrail.core.projections.fold import ANY_TYPE, Folder, Projection
from modeltrail.core.projections.runner import Runner
from modeltrail.core.projections.state import Key, RowT, Spec, State
from modeltrail.core.projections.tables import REJECTIONS
from modeltrail.errors import InvalidInput


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
