"""A subscription's feed over the Kafka log: a consumer group, and the projection's verdicts.

Delivery and place belong to a Kafka consumer group (``<prefix>.subscription.<group>``):
its members share the topics' partitions, each partition is read in log order, and the
group's committed offsets are the subscription's durable place. Kafka's own tools show
it like any other group (members, committed offsets, lag).

Verdicts. Over Kafka the log also holds what the projector refused: the losing side of a
race, a batch a rule refused, an unreadable record, the second copy of a retried batch.
So a record is handed out only once the projection's checkpoint for its partition has
passed it, and only if the projection's mirror of the log (``log_events``) recorded it
``accepted``; anything else is passed over like an event the filter skips. A partition
whose next record awaits its verdict is paused meanwhile; the others go on.

Place. Kafka commits one offset per partition, but one record holds a whole append
batch. A commit therefore stores the offset of the first record not wholly handled and,
in the commit's metadata, ``index k``: how many of that record's events were handled
(empty metadata: none). The member given the partition next resumes at that offset, as
Kafka does, and passes over those k events, so a restart resumes right after the last
committed event even in the middle of a batch.

Start. A partition the group never committed starts where ``start`` says (the
beginning, the end as it is now, or the first record appended at or after a moment), and
that offset is committed before the member joins, so that a restart before the first
``commit`` does not skip what landed meanwhile.

Members. Several processes of one group share the partitions. When partitions move (a
member joins or leaves), the events of those partitions that a member handed out but
did not commit are handed out again by their new owner, and a commit covers only the
partitions the member still holds. A member that does not poll for
``MAX_POLL_INTERVAL_MS`` (a handler that runs longer) is put out of the group: its next
commit raises ``ConcurrencyConflict``, and the events come again. Kafka forgets the
offsets of a group that has had no member for the broker's ``offsets.retention.minutes``
(7 days by default); such a group starts again at ``start``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from kafka import ConsumerRebalanceListener

from modeltrail.core.events.envelope import Event
from modeltrail.core.events.kafka_log import (
    INDEX_BITS,
    INFERENCE,
    INFERENCE_TYPES,
    MAX_RECORD_EVENTS,
    REGISTRY,
    Record,
    offset_of,
    position_of,
)
from modeltrail.core.events.log import LogFilter
from modeltrail.core.projections.records import ACCEPTED
from modeltrail.errors import ConcurrencyConflict, IntegrityError, InvalidInput

if TYPE_CHECKING:
    from modeltrail.core.kafka_engine import KafkaEngine

log = logging.getLogger(__name__)

KafkaStart = Literal["earliest", "latest"] | int
"""Where a partition the group never committed starts: its beginning, its end now, or the
first record appended at or after a moment (UTC microseconds, the broker's append time)."""
JOIN_POLL_MS = 50
"""The shortest consumer poll while the member is not a stable member of its group:
kafka-python joins a group only inside poll calls, and never inside very short ones."""
IDLE_POLL_MS = 100
"""The longest consumer poll: how soon a ``close`` from another thread takes effect."""
VERDICT_POLL_MS = 5
"""The consumer poll while records await the projection's verdict: how often it is checked."""
MAX_POLL_INTERVAL_MS = 900_000
"""How long a member may go without polling (a handler running) before the group puts it
out: 15 minutes."""
_METADATA = re.compile(r"index (\d+)")


class Place(NamedTuple):
    """How far a partition was handled: the offset of the first record not wholly
    handled, and how many of that record's events were."""

    offset: int
    handled: int = 0

    @property
    def after(self) -> int:
        """The position every handled event is at or before (an ``after`` bound)."""
        return (self.offset << INDEX_BITS) | self.handled

    @property
    def metadata(self) -> str:
        """The offset commit's metadata: ``index k``, or empty when k is 0."""
        return f"index {self.handled}" if self.handled else ""

    @classmethod
    def committed(cls, offset: int, metadata: str | None) -> Place:
        """A place from a committed offset and its metadata (other metadata: index 0)."""
        found = _METADATA.fullmatch(metadata or "")
        handled = int(found.group(1)) if found else 0
        return cls(offset, min(handled, MAX_RECORD_EVENTS))

    def describe(self) -> str:
        return f"offset {self.offset}" + (f" event {self.handled}" if self.handled else "")


_BEFORE_ALL = Place(-1)


def subscription_group_id(prefix: str, group: str) -> str:
    """The Kafka consumer group of a subscription group."""
    return f"{prefix}.subscription.{group}"


def topic_kinds(types: frozenset[str] | None) -> list[str]:
    """The topics that can hold events of these types (None: any type)."""
    if types is None:
        return [REGISTRY, INFERENCE]
    kinds = [REGISTRY] if types - INFERENCE_TYPES else []
    return kinds + ([INFERENCE] if types & INFERENCE_TYPES else [])


def _last_position(record: Record) -> int:
    """The position the projection's checkpoint reaches once it applied ``record``."""
    return position_of(record.offset, max(len(record.events), 1) - 1)


class KafkaFeed:
    """A subscription's feed over a Kafka log; see the module docstring."""

    def __init__(
        self,
        engine: KafkaEngine,
        group_id: str,
        where: LogFilter,
        *,
        start: KafkaStart = "earliest",
    ) -> None:
        if not (start in ("earliest", "latest") or (isinstance(start, int) and start >= 0)):
            raise InvalidInput(
                f"start {start!r} is invalid: use 'earliest', 'latest' or a time in UTC "
                "microseconds"
            )
        self.engine = engine
        self.kafka = engine.kafka
        self.group_id = group_id
        self.where = where
        self.topics = [self.kafka.topics[kind] for kind in topic_kinds(where.types)]
        self._timeout_ms = int(self.kafka.timeout_s * 1000)
        # The consumer is used by one thread at a time: the subscription's, or a closer.
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._closed = False
        # Assignment changes noted by the rebalance listener, which runs on kafka-python's
        # network thread and must not block; the consuming thread applies them.
        self._changes: list[tuple[str, list[Any]]] = []
        self._revoked: set[str] = set()
        """Partitions revoked by a rebalance whose assignment has not come yet."""
        self._changes_lock = threading.Lock()
        self._owned: dict[str, Any] = {}
        """Partitions this member holds: name -> TopicPartition."""
        self._held: dict[str, deque[Record]] = {}
        """Records fetched, awaiting the projection's verdict, per partition."""
        self._skip: dict[str, Place] = {}
        """Events at the start of a record that were handled before the last commit."""
        self._released: dict[str, Place] = {}
        self._marked: dict[str, Place] = {}
        self._committed: dict[str, Place] = {}
        self._sizes: dict[tuple[str, int], int] = {}
        """Event counts of released records not yet committed past."""
        settings = {
            "client_id": f"{group_id}-member",
            "max_poll_interval_ms": MAX_POLL_INTERVAL_MS,
        }
        # The start is committed outside the group's generations, by a consumer that does
        # not subscribe; the member subscribes once it is stored.
        starter = self.kafka.group_consumer(group_id, self.topics, **settings)
        try:
            self._starts = self._start(starter, start)
        finally:
            with contextlib.suppress(Exception):
                starter.close(autocommit=False)
        self._consumer = self.kafka.group_consumer(
            group_id, self.topics, listener=_Listener(self), **settings
        )

    # -- the Feed interface -----------------------------------------------------------

    @property
    def committed(self) -> int:
        """The largest committed ``after`` bound of any partition (positions of different
        partitions are not comparable: ``place`` tells each)."""
        return max((p.after for p in self._committed.values()), default=0)

    @property
    def place(self) -> str:
        if not self._committed:
            return "no committed offsets yet"
        places = (f"{name} {p.describe()}" for name, p in sorted(self._committed.items()))
        return "resumes at " + ", ".join(places)

    def poll(self, timeout_s: float | None, stop: threading.Event) -> list[Event]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            try:
                polled = False
                while not (stop.is_set() or self._closing.is_set() or self._closed):
                    self._settle()
                    events = self._release()
                    if events:
                        return events
                    now = time.monotonic()
                    if polled and deadline is not None and now >= deadline:
                        break
                    waiting = any(q for name, q in self._held.items() if name in self._owned)
                    wait_ms: float = VERDICT_POLL_MS if waiting else IDLE_POLL_MS
                    if deadline is not None:
                        wait_ms = min(wait_ms, (deadline - now) * 1000)
                    if not self._stable():
                        wait_ms = max(wait_ms, JOIN_POLL_MS)
                    self._fetch(max(int(wait_ms), 0))
                    polled = True
                return []
            finally:
                if self._closing.is_set():
                    self._shutdown()

    def mark(self, event: Event) -> None:
        offset = offset_of(event.position)
        handled = event.position & MAX_RECORD_EVENTS
        size = self._sizes.get((event.partition, offset))
        whole = size is not None and handled >= size
        place = Place(offset + 1) if whole else Place(offset, handled)
        if place > self._marked.get(event.partition, _BEFORE_ALL):
            self._marked[event.partition] = place

    def mark_all(self) -> None:
        for name, place in self._released.items():
            if place > self._marked.get(name, _BEFORE_ALL):
                self._marked[name] = place

    def commit(self) -> None:
        from kafka.errors import CommitFailedError, RebalanceInProgressError
        from kafka.structs import OffsetAndMetadata

        with self._lock:
            self._check_open()
            self._settle()
            moved = {
                name: place
                for name, place in self._marked.items()
                if name in self._owned and place > self._committed.get(name, _BEFORE_ALL)
            }
            if not moved:
                return
            offsets = {
                self._owned[name]: OffsetAndMetadata(place.offset, place.metadata, -1)
                for name, place in moved.items()
            }
            try:
                self.kafka._call(
                    lambda: self._consumer.commit(offsets, timeout_ms=self._timeout_ms),
                    "cannot commit the subscription's offsets",
                )
            except (CommitFailedError, RebalanceInProgressError) as exc:
                where = ", ".join(f"{n} {p.describe()}" for n, p in sorted(moved.items()))
                raise ConcurrencyConflict(
                    f"consumer group {self.group_id!r} refused the commit of {where}: its "
                    "partitions were being reassigned (a member joined or left, or this one "
                    f"did not poll for {MAX_POLL_INTERVAL_MS / 1000:g}s); the events "
                    "handed out since the last commit will be handed out again"
                ) from exc
            self._committed.update(moved)
            for name, place in moved.items():
                for key in [k for k in self._sizes if k[0] == name and k[1] < place.offset]:
                    del self._sizes[key]

    def rewind(self) -> None:
        with self._lock:
            self._check_open()
            self._settle()
            for name, tp in self._owned.items():
                self._held[name].clear()
                self._consumer.resume(tp)
                place = self._committed_place(name, tp)
                self._consumer.seek(tp, place.offset)
                self._reset(name, place)

    def close(self) -> None:
        """Leaves the group; from another thread, once that thread's poll returns."""
        self._closing.set()
        if self._lock.acquire(blocking=False):
            try:
                self._shutdown()
            finally:
                self._lock.release()

    # -- internals --------------------------------------------------------------------

    def _start(self, consumer: Any, start: KafkaStart) -> dict[str, int]:
        """Commits the start offset of every partition the group never committed; returns
        those offsets by partition name. ``consumer``: of the group, not subscribed."""
        from kafka import TopicPartition
        from kafka.errors import CommitFailedError
        from kafka.structs import OffsetAndMetadata

        kafka, timeout_ms = self.kafka, self._timeout_ms
        partitions = [
            TopicPartition(topic, n)
            for topic in self.topics
            for n in sorted(consumer.partitions_for_topic(topic))  # known since its check
        ]
        fresh = []
        for tp in partitions:
            found = kafka._call(
                lambda tp=tp: consumer.committed(tp, metadata=True, timeout_ms=timeout_ms),
                f"cannot read the offsets of consumer group {self.group_id!r}",
            )
            name = kafka.partition_name(tp.topic, tp.partition)
            if found is None:
                fresh.append(tp)
            else:
                self._committed[name] = Place.committed(found.offset, found.metadata)
        if not fresh:
            return {}
        if start == "earliest":
            offsets = kafka._call(
                lambda: consumer.beginning_offsets(fresh, timeout_ms), "cannot read offsets"
            )
        else:
            offsets = kafka._call(
                lambda: consumer.end_offsets(fresh, timeout_ms), "cannot read offsets"
            )
        if isinstance(start, int):
            at = kafka._call(
                lambda: consumer.offsets_for_times(dict.fromkeys(fresh, start // 1000), timeout_ms),
                "cannot find offsets by time",
            )
            offsets = {tp: offsets[tp] if at.get(tp) is None else at[tp].offset for tp in fresh}
        starts = {kafka.partition_name(tp.topic, tp.partition): int(offsets[tp]) for tp in fresh}
        try:
            kafka._call(
                lambda: consumer.commit(
                    {tp: OffsetAndMetadata(int(offsets[tp]), "", -1) for tp in fresh},
                    timeout_ms=timeout_ms,
                ),
                f"cannot commit the start of consumer group {self.group_id!r}",
            )
        except CommitFailedError:
            # The group has live members, which hold these partitions and their places.
            log.info("group %s has members: its new partitions start as they assign", self.group_id)
        else:
            self._committed.update((name, Place(offset)) for name, offset in starts.items())
        return starts

    def _stable(self) -> bool:
        from kafka.structs import MemberState

        return bool(self._consumer.group_metadata().state == MemberState.STABLE)

    def _note(self, change: str, partitions: Any) -> None:
        with self._changes_lock:
            self._changes.append((change, list(partitions)))

    def _settle(self) -> None:
        """Applies the assignment changes the listener noted, in their order.

        A rebalance revokes every partition and then assigns the full new set. A partition
        in both was this member's all along: kafka-python keeps its position and buffers,
        and so does the feed (what was handed out stays handed out). Any other assigned
        partition starts at the group's committed place; a lost one (this member was put
        out of the group, and others may have read it since) is forgotten at once."""
        with self._changes_lock:
            changes, self._changes = self._changes, []
        for change, partitions in changes:
            names = {self.kafka.partition_name(tp.topic, tp.partition): tp for tp in partitions}
            if change == "revoked":
                self._revoked |= names.keys()
                for name in names:
                    self._owned.pop(name, None)
                continue
            if change == "lost":
                for name in names:
                    self._forget(name)
                continue
            for name in self._revoked - names.keys():
                self._forget(name)
            for name, tp in names.items():
                self._owned[name] = tp
                if name in self._revoked and name in self._held:
                    continue
                self._held[name] = deque()  # kafka-python resumes it at the committed offset
                self._reset(name, self._committed_place(name, tp))
            self._revoked.clear()

    def _forget(self, name: str) -> None:
        self._owned.pop(name, None)
        self._held.pop(name, None)
        self._skip.pop(name, None)
        self._released.pop(name, None)
        self._marked.pop(name, None)
        self._revoked.discard(name)
        for key in [k for k in self._sizes if k[0] == name]:
            del self._sizes[key]

    def _committed_place(self, name: str, tp: Any) -> Place:
        found = self.kafka._call(
            lambda: self._consumer.committed(tp, metadata=True, timeout_ms=self._timeout_ms),
            f"cannot read the offsets of consumer group {self.group_id!r}",
        )
        if found is None:
            return Place(self._starts.get(name, 0))
        return Place.committed(found.offset, found.metadata)

    def _reset(self, name: str, place: Place) -> None:
        self._committed[name] = self._released[name] = self._marked[name] = place
        if place.handled:
            self._skip[name] = place
        else:
            self._skip.pop(name, None)

    def _fetch(self, wait_ms: int) -> None:
        kafka, consumer = self.kafka, self._consumer
        batch = kafka._call(lambda: consumer.poll(timeout_ms=wait_ms), "cannot read")
        self._settle()
        for tp, messages in batch.items():
            name = kafka.partition_name(tp.topic, tp.partition)
            queue = self._held.get(name)
            if queue is None or name not in self._owned:
                continue  # not this member's any more
            queue.extend(kafka.record(name, m.offset, m.timestamp, m.value) for m in messages)
            if queue:
                consumer.pause(tp)  # until the projection has decided what is held

    def _release(self) -> list[Event]:
        """The accepted, wanted events of every held record the projection has decided."""
        # partitions revoked by a rebalance still under way wait for its assignment
        waiting = [name for name, queue in self._held.items() if queue and name in self._owned]
        if not waiting:
            return []
        done = self.engine.log.checkpoints()
        events: list[Event] = []
        for name in waiting:
            queue, reached = self._held[name], done.get(name, 0)
            ready = []
            while queue and _last_position(queue[0]) <= reached:
                ready.append(queue.popleft())
            if not queue:
                self._consumer.resume(self._owned[name])
            if ready:
                events += self._verdicts(name, ready)
        return events

    def _verdicts(self, name: str, records: Sequence[Record]) -> list[Event]:
        statuses = self._statuses(name, [r.position for r in records if r.events])
        out: list[Event] = []
        for record in records:
            self._released[name] = Place(record.offset + 1)
            if not record.events:
                continue  # unreadable: the projector recorded it as rejected
            status = statuses.get(record.position)
            if status is None:
                raise IntegrityError(
                    f"Kafka record {name}@{record.offset} is behind the projection's checkpoint "
                    "but not in its mirror of the log (log_events): the projection is damaged; "
                    "rebuild it (`modeltrail project --rebuild`)"
                )
            self._sizes[name, record.offset] = len(record.events)
            events: Sequence[Event] = record.events
            skip = self._skip.get(name)
            if skip is not None and record.offset >= skip.offset:
                del self._skip[name]
                if record.offset == skip.offset:
                    events = events[skip.handled :]
            if status == ACCEPTED:
                out += [e for e in events if self.where.matches(e)]
        return out

    def _statuses(self, name: str, positions: Sequence[int]) -> dict[int, str]:
        """The projection's verdict on each record, by the position of its first event."""
        reader = self.engine.database.reader()
        found: dict[int, str] = {}
        for at in range(0, len(positions), 500):
            chunk = positions[at : at + 500]
            rows = reader.rows(
                "SELECT position, status FROM log_events WHERE partition = ? "
                f"AND position IN ({', '.join('?' * len(chunk))})",
                [name, *chunk],
            )
            found.update((int(position), str(status)) for position, status in rows)
        return found

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidInput(
                f"the subscription of consumer group {self.group_id!r} is closed: commit and "
                "rewind before closing it"
            )

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # leaving anyway; uncommitted events come again
            self._consumer.close(autocommit=False, timeout_ms=5000)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Notes assignment changes for the consuming thread (it runs on the network thread)."""

    def __init__(self, feed: KafkaFeed) -> None:
        self.feed = feed

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.feed._note("revoked", revoked)

    def on_partitions_lost(self, lost: Any) -> None:
        self.feed._note("lost", lost)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.feed._note("assigned", assigned)
