"""The first fold every event passes: its stream claim and its namespace's write rule.

Over the SQL log these checks always pass (the log refuses a bad claim at write time);
over Kafka the log accepts whatever producers send, and this fold is where the first
writer in log order wins and later claims on the same version are rejected.
"""

from __future__ import annotations

from typing import Any

from modeltrail.core.events.chain import claim_problem
from modeltrail.core.events.envelope import EMPTY_STREAM, Event, StreamHead
from modeltrail.core.projections.fold import ANY_TYPE, Projection
from modeltrail.core.projections.state import State
from modeltrail.core.projections.tables import NAMESPACES, STREAM_HEADS, StreamHeadRow
from modeltrail.errors import NotFound, PermissionDenied

READ_ONLY_TYPES = frozenset({"VersionDownloaded"})
"""Events that record a read: anyone may record them in any namespace."""

INDEPENDENT_TYPES = frozenset({"InferenceBatchRecorded"})
"""High-volume events that may be stored apart from their namespace's other events (the
Kafka log keeps them in their own topic). Over such a log no order between them and the
namespace's events is guaranteed, so a rule that reads namespace state would make
replays disagree; only their own stream's claim is checked here. Their commands still
check the namespace before emitting."""


def check_namespace_write(state: State, type_: str, namespace: str, actor: str) -> None:
    """The namespace rule: an event of ``type_`` names a namespace that exists, and a
    personal namespace is written only by its owner (anyone may record a read)."""
    found = state.get(NAMESPACES, (namespace,))
    if found is None:
        raise NotFound(f"{type_} names namespace {namespace!r}, which does not exist")
    if found.personal and actor != found.owner and type_ not in READ_ONLY_TYPES:
        raise PermissionDenied(
            f"actor {actor!r} may not write to {namespace!r}: a personal namespace is "
            f"written only by its owner {found.owner!r}"
        )


def check_claim(state: State, event: Event, _data: dict[str, Any]) -> None:
    head = state.get(STREAM_HEADS, (event.stream,))
    problem = claim_problem(event, StreamHead(head.version, head.hash) if head else EMPTY_STREAM)
    if problem is not None:
        raise problem
    if event.type != "NamespaceCreated" and event.type not in INDEPENDENT_TYPES:
        check_namespace_write(state, event.type, event.namespace, event.actor)
    state.put(STREAM_HEADS, StreamHeadRow(event.stream, event.stream_version, event.hash))


STREAMS = Projection("streams", (STREAM_HEADS,), {ANY_TYPE: check_claim})
