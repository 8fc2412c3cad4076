"""What a projection is, and how events are fed to several of them.

A projection is a set of tables and one handler per event type it cares about. A
handler is a fold step: ``handler(state, event, data)`` reads and writes rows through
``state`` and does no I/O of its own. A handler refuses an event by raising a
``ModeltrailError``; the caller decides what a refusal means (a command fails; a
projector over Kafka records the rejection and moves on, so every replay agrees).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modeltrail.core.events.codec import Codec
from modeltrail.core.events.envelope import Event
from modeltrail.core.projections.state import Spec, State

Handler = Callable[[State, Event, dict[str, Any]], None]
ANY_TYPE = "*"
"""A handler under this key sees every event, of known type or not, before the others."""


@dataclass(frozen=True)
class Projection:
    name: str
    specs: tuple[Spec, ...]
    handlers: Mapping[str, Handler] = field(default_factory=dict)


def dumps(value: Any) -> str:
    """Canonical JSON: equal values give equal text, so rebuilds are byte-identical."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Folder:
    """Feeds events to projections, decoding each payload at most once."""

    def __init__(self, projections: Sequence[Projection], codec: Codec) -> None:
        self.projections = tuple(projections)
        self.codec = codec
        self.specs = tuple(spec for p in projections for spec in p.specs)
        self._every = [p.handlers[ANY_TYPE] for p in projections if ANY_TYPE in p.handlers]
        self._by_type: dict[str, list[Handler]] = {}
        for projection in projections:
            for type_, handler in projection.handlers.items():
                if type_ != ANY_TYPE:
                    self._by_type.setdefault(type_, []).append(handler)

    def apply(self, state: State, event: Event) -> None:
        handlers = self._by_type.get(event.type, ())
        data = self.codec.decode(event) if handlers else {}
        for handler in self._every:
            handler(state, event, data)
        for handler in handlers:
            handler(state, event, data)

    def apply_all(self, state: State, events: Iterable[Event]) -> None:
        for event in events:
            self.apply(state, event)
