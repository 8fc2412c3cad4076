"""Sealing: a draft becomes an event with an id, a version, a time and a chained hash."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from modeltrail.core.events.chain import event_hash
from modeltrail.core.events.codec import Codec
from modeltrail.core.events.envelope import Draft, Event, StreamHead


class Sealer:
    def __init__(self, codec: Codec, new_id: Callable[[], uuid.UUID] = uuid.uuid4) -> None:
        self.codec = codec
        self._new_id = new_id

    def seal(self, draft: Draft, head: StreamHead, *, actor: str, recorded_at: int) -> Event:
        """Encodes the payload once and chains the event to ``head``, its stream's last."""
        schema, payload = self.codec.encode(draft.type, draft.data)
        event_id = self._new_id()
        version = head.version + 1
        digest = event_hash(
            event_id.bytes,
            draft.type,
            draft.stream,
            version,
            draft.namespace,
            recorded_at,
            actor,
            head.hash,
            schema,
            payload,
        )
        return Event(
            event_id,
            draft.type,
            draft.stream,
            version,
            draft.namespace,
            recorded_at,
            actor,
            head.hash,
            digest,
            schema,
            payload,
        )
