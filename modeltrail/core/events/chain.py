"""The per-stream hash chain: each event's hash covers its envelope, its payload and the
hash of the stream's previous event, so changing, removing or reordering any event
breaks every later link.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from modeltrail.core.events.envelope import EMPTY_STREAM, Event, StreamHead
from modeltrail.errors import ConcurrencyConflict, IntegrityError, ModeltrailError


def _field(value: bytes) -> bytes:
    # Length-prefixed so that no two different envelopes hash the same bytes.
    return len(value).to_bytes(4, "big") + value


def event_hash(
    event_id: bytes,
    type_: str,
    stream: str,
    stream_version: int,
    namespace: str,
    recorded_at: int,
    actor: str,
    prev_hash: bytes,
    schema: bytes,
    payload: bytes,
) -> bytes:
    digest = hashlib.sha256()
    for part in (
        event_id,
        type_.encode(),
        stream.encode(),
        stream_version.to_bytes(8, "big", signed=True),
        namespace.encode(),
        recorded_at.to_bytes(8, "big", signed=True),
        actor.encode(),
        prev_hash,
        schema,
        payload,
    ):
        digest.update(_field(part))
    return digest.digest()


def expected_hash(event: Event) -> bytes:
    return event_hash(
        event.event_id.bytes,
        event.type,
        event.stream,
        event.stream_version,
        event.namespace,
        event.recorded_at,
        event.actor,
        event.prev_hash,
        event.schema,
        event.payload,
    )


@dataclass(frozen=True)
class ChainProblem:
    """The first place where a stream's chain does not hold."""

    stream: str
    stream_version: int
    position: int
    rule: str

    def __str__(self) -> str:
        return f"{self.stream} v{self.stream_version} (position {self.position}): {self.rule}"


class ChainChecker:
    """Follows every stream's chain through events fed in log order."""

    def __init__(self) -> None:
        self.heads: dict[str, StreamHead] = {}
        self.broken: dict[str, ChainProblem] = {}
        self.checked = 0

    def feed(self, event: Event) -> ChainProblem | None:
        self.checked += 1
        if event.stream in self.broken:
            return None  # only the first break of a stream is worth reporting
        problem = self._check(event, self.heads.get(event.stream, EMPTY_STREAM))
        if problem is not None:
            self.broken[event.stream] = problem
            return problem
        self.heads[event.stream] = StreamHead(event.stream_version, event.hash)
        return None

    @staticmethod
    def _check(event: Event, head: StreamHead) -> ChainProblem | None:
        claim = claim_problem(event, head)
        if claim is not None:
            rule = str(claim)
        elif expected_hash(event) != event.hash:
            rule = "hash does not match the envelope and payload: the event was altered"
        else:
            return None
        return ChainProblem(event.stream, event.stream_version, event.position, rule)


def claim_problem(event: Event, head: StreamHead) -> ModeltrailError | None:
    """Why ``event`` may not follow ``head``, the last event of its stream, as the error a
    writer gets (None when it may): the claim rule every log keeps, whoever checks it
    (the SQL log when it appends, the streams fold over Kafka, ``verify``)."""
    if event.stream_version != head.version + 1:
        return ConcurrencyConflict(
            f"{event.type} claims version {event.stream_version} of stream {event.stream!r}, "
            f"whose last version is {head.version}: a stream's versions are contiguous, "
            "each claimed once"
        )
    if event.prev_hash != head.hash:
        return IntegrityError(
            f"{event.type} for {event.stream!r} v{event.stream_version} does not chain to the "
            "stream's previous event: its prev_hash is not that event's hash"
        )
    return None


def check_chains(events: Iterable[Event]) -> tuple[int, list[ChainProblem]]:
    """Checks every stream's chain; returns the count checked and the first break of each."""
    checker = ChainChecker()
    problems = [p for p in map(checker.feed, events) if p is not None]
    return checker.checked, problems
