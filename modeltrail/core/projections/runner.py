"""Feeds log events to the folds and keeps the checkpoint beside the rows they write.

The checkpoint (the last position applied, per partition) is a row written by the same
transaction as the projection rows, so after a crash the projection resumes exactly
where its last commit left it: no event applied twice, none skipped.
"""

from __future__ import annotations

import base64
import gc
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from modeltrail.core.db import Query, Tx
from modeltrail.core.events.envelope import Event
from modeltrail.core.events.log import EventLog
from modeltrail.core.projections.fold import Folder
from modeltrail.core.projections.state import (
    Journal,
    MemoryState,
    Overlay,
    RowT,
    Spec,
    SqlState,
    State,
    read_all,
    write_all,
)
from modeltrail.core.projections.tables import (
    CHECKPOINTS,
    REJECTIONS,
    CheckpointRow,
    RejectionRow,
)
from modeltrail.errors import ModeltrailError

Progress = Callable[[int], None]
"""Called with the number of events applied since the last call."""

CHUNK = 5000
"""Events folded (or applied by a projector) at a time during a replay or catch-up."""


class SnapshotSource(Protocol):
    """Folded states stored at positions (see ``snapshots.SqlSnapshots``)."""

    def nearest(
        self, until: int | None, query: Query | None = None
    ) -> tuple[MemoryState, int] | None:
        """A fresh copy of the newest usable snapshot at or before ``until``."""


class Runner:
    def __init__(
        self, folder: Folder, name: str = "projections", snapshots: SnapshotSource | None = None
    ) -> None:
        self.folder = folder
        self.name = name
        self.snapshots = snapshots
        """Where ``fold_log`` finds a state to start from, when it is given none."""

    @property
    def specs(self) -> list[Spec]:
        return [*self.folder.specs, CHECKPOINTS, REJECTIONS]

    def checkpoint(self, state: State, partition: str = "") -> int:
        row = state.get(CHECKPOINTS, (self.name, partition))
        return 0 if row is None else int(row.position)

    def apply(self, state: State, events: Sequence[Event], partition: str = "") -> None:
        """Applies events that must be accepted (a refusal propagates to the caller)."""
        self.folder.apply_all(state, events)
        self.advance(state, events, partition)

    def advance(self, state: State, events: Sequence[Event], partition: str = "") -> None:
        """Moves the checkpoint past events whose effects are already in ``state``."""
        if events:
            state.put(CHECKPOINTS, CheckpointRow(self.name, partition, events[-1].position))

    def apply_tolerant(self, state: State, events: Iterable[Event], partition: str = "") -> int:
        """Applies events in order; one a fold refuses is recorded as rejected and leaves
        no other trace, so every replay of the same log reaches the same state."""
        last = None
        scratch = self.scratch(state)
        for event in events:
            try:
                self.folder.apply(scratch, event)
            except ModeltrailError as exc:
                scratch.rollback()
                self.reject(state, [event], exc)
            else:
                scratch.keep()
            last = event
        if last is not None:
            state.put(CHECKPOINTS, CheckpointRow(self.name, partition, last.position))
        return 0 if last is None else last.position

    @staticmethod
    def scratch(state: State) -> Journal | Overlay:
        """Where folds try an event (or a record) before it is kept or rolled back: over
        memory an undo journal, cheapest when almost everything is kept; over SQL an
        overlay, which (unlike a journal) never reads a row before writing it."""
        return state.journal() if isinstance(state, MemoryState) else Overlay(state)

    def reject(self, state: State, events: Sequence[Event], reason: Exception) -> None:
        text = f"{type(reason).__name__}: {reason}"
        for event in events:
            state.put(
                REJECTIONS,
                RejectionRow(
                    event.partition,
                    event.position,
                    event.event_id.bytes,
                    event.stream,
                    event.type,
                    text,
                ),
            )

    def fold_log(
        self,
        log: EventLog,
        *,
        until: int | None = None,
        start: tuple[MemoryState, int] | None = None,
        progress: Progress | None = None,
        query: Query | None = None,
    ) -> MemoryState:
        """Folds the log into memory, from ``start``, else from the nearest snapshot at or
        before ``until``, else from position 0."""
        if start is None and self.snapshots is not None:
            start = self.snapshots.nearest(until, query)
        state, after = start if start is not None else (MemoryState(), 0)
        pending: list[Event] = []
        with _collector_paused():
            for event in log.read(after=after, until=until, query=query):
                pending.append(event)
                if len(pending) == CHUNK:
                    self.apply_tolerant(state, pending)
                    if progress:
                        progress(len(pending))
                    pending.clear()
            self.apply_tolerant(state, pending)
        if progress and pending:
            progress(len(pending))
        return state

    def rebuild(self, tx: Tx, log: EventLog, progress: Progress | None = None) -> int:
        """Replaces every projection table with a fold of the whole log."""
        state = self.fold_log(log, progress=progress, query=tx)
        write_all(tx, state, self.specs)
        return self.checkpoint(state)

    def catch_up(self, state: SqlState, log: EventLog, head: int) -> int:
        """Applies events the projection has not seen yet (appended past it)."""
        done = self.checkpoint(state)
        if done < head:
            self.apply_tolerant(state, log.read(after=done, until=head, query=state.tx))
        return head


def diff_tables(
    specs: Sequence[Spec],
    live: Callable[[Spec], list[RowT]],
    fresh: MemoryState,
    *,
    log: str,
    rebuild: str,
) -> list[str]:
    """How the projection tables (``live``: a table's rows in key order) differ from a
    fresh fold of the log (``log`` names it; ``rebuild`` is the command that repairs)."""
    problems = []
    for spec in specs:
        rows = live(spec)
        rebuilt = sorted(fresh.rows(spec), key=spec.key_of)
        if rows != rebuilt:
            problems.append(
                f"projection table {spec.name} differs from a fresh fold of {log} "
                f"({len(rows)} rows live, {len(rebuilt)} rebuilt): run `{rebuild}`"
            )
    return problems


@contextmanager
def _collector_paused() -> Iterator[None]:
    """A replay allocates millions of row tuples that all stay alive: the cyclic garbage
    collector would walk them again and again and find nothing (rows hold no cycles)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def export(query: Query, specs: Sequence[Spec]) -> Iterator[str]:
    """Every projection row as canonical JSON lines, in key order: equal state, equal bytes."""
    for spec in specs:
        for row in read_all(query, spec):
            yield json.dumps([spec.name, [_plain(v) for v in row]], ensure_ascii=False)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode()
    return value
