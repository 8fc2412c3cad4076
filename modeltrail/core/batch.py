"""The unit a command writes: events emitted one by one onto a scratch state.

Each ``emit`` seals the event and folds it into a scratch overlay at once, so the rest
of the command sees its own effects (a model created a line earlier exists) and every
rule the folds enforce is checked before anything reaches the log. The log then takes
the batch whole or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modeltrail.core.db import Query
from modeltrail.core.events.envelope import EMPTY_STREAM, Draft, Event, StreamHead
from modeltrail.core.events.seal import Sealer
from modeltrail.core.projections.fold import Folder
from modeltrail.core.projections.state import Overlay, State
from modeltrail.core.projections.tables import STREAM_HEADS


class Batch:
    def __init__(
        self,
        base: State,
        folder: Folder,
        sealer: Sealer,
        *,
        actor: str,
        recorded_at: int,
        query: Query,
        first_position: int | None = None,
    ) -> None:
        self.state = Overlay(base)
        self.query = query
        """Committed state as of the start of the command, for lookups beyond one key."""
        self.events: list[Event] = []
        self.actor = actor
        self.recorded_at = recorded_at
        self._folder = folder
        self._sealer = sealer
        self.codec = sealer.codec
        self._next_position = first_position
        """Where the log will place the next event, when the writer knows it (it holds the
        log's write lock); the scratch state is then exactly what the log will hold."""

    def emit(self, type_: str, stream: str, namespace: str, data: Mapping[str, Any]) -> Event:
        head = self.state.get(STREAM_HEADS, (stream,))
        event = self._sealer.seal(
            Draft(type_, stream, namespace, data),
            StreamHead(head.version, head.hash) if head else EMPTY_STREAM,
            actor=self.actor,
            recorded_at=self.recorded_at,
        )
        if self._next_position is not None:
            event = event.at(self._next_position, appended_at=0)
            self._next_position += 1
        self._folder.apply(self.state, event)
        self.events.append(event)
        return event

    def child(self, *, actor: str, recorded_at: int, sealer: Sealer) -> Batch:
        """A batch over this one's scratch state that writes as another actor, time or id
        source (a spooled command replayed as it was first made); ``adopt`` it after."""
        return Batch(
            self.state,
            self._folder,
            sealer,
            actor=actor,
            recorded_at=recorded_at,
            query=self.query,
            first_position=self._next_position,
        )

    def adopt(self, child: Batch) -> None:
        """Takes a child's events and state changes into this batch."""
        child.state.commit()
        self.events.extend(child.events)
        if self._next_position is not None:
            self._next_position += len(child.events)
