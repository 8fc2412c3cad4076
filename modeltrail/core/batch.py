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
    ) -> None:
        self.state = Overlay(base)
        self.query = query
        """Committed state as of the start of the command, for lookups beyond one key."""
        self.events: list[Event] = []
        self.actor = actor
        self.recorded_at = recorded_at
        self._folder = folder
        self._sealer = sealer

    def emit(self, type_: str, stream: str, namespace: str, data: Mapping[str, Any]) -> Event:
        head = self.state.get(STREAM_HEADS, (stream,))
        event = self._sealer.seal(
            Draft(type_, stream, namespace, data),
            StreamHead(head.version, head.hash) if head else EMPTY_STREAM,
            actor=self.actor,
            recorded_at=self.recorded_at,
        )
        self._folder.apply(self.state, event)
        self.events.append(event)
        return event
