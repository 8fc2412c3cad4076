"""The event log on Apache Kafka: two topics, one Kafka record per append batch.

Topics (created when missing, with unlimited retention and broker-assigned times):

- ``<prefix>.registry``, keyed by namespace, so every decision that spans streams of a
  namespace sees one order;
- ``<prefix>.inference``, keyed by the inference stream (``<ns>/<model>/<run>``), for
  throughput. Only ``InferenceBatchRecorded`` events go there; their stream is their own,
  so each stream lives in exactly one partition.

A batch is one record (a small binary layout of envelopes, see ``encode_record``), so it
lands whole or not at all without Kafka transactions, and a client that sends on the
order of 15,000 records/s still moves many more events. The producer is idempotent with
``acks=all``.

Positions. An event is at (partition, offset, index in its record). ``Event.partition``
names the partition (``registry-0``, ``inference-3``) and ``Event.position`` is
``offset << 20 | (index + 1)``: an int that orders the events of one partition in log
order, is never 0 (0 still means "before everything"), and gives the record's offset
back as ``position >> 20``. Hence at most ``MAX_RECORD_EVENTS`` (2**20 - 1) events per
append. Positions of different partitions are not comparable: ``after``/``until`` bound
each partition's positions separately, and the only order across partitions is time.

The log does not refuse stale stream claims or retried batches: whatever a producer
sends is stored. The projector decides, in log order (first writer wins), and records
what it rejected; see ``core/projections/records.py``.
"""

from __future__ import annotations

import re
import struct
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modeltrail.core.events.envelope import EMPTY_STREAM, Event, StreamHead
from modeltrail.core.events.log import NO_FILTER, EventLog, LogFilter, poll_tail
from modeltrail.errors import IntegrityError, InvalidInput, InvalidName, LogUnavailable

INDEX_BITS = 20
MAX_RECORD_EVENTS = (1 << INDEX_BITS) - 1
"""The most events one append may carry: the index within a record has 20 bits."""
MAX_RECORD_BYTES = 32 * 1024 * 1024
"""The largest encoded batch; the topics accept records this big."""
TOPIC_MAX_MESSAGE_BYTES = MAX_RECORD_BYTES + 1024 * 1024  # room for Kafka's batch framing
INFERENCE_TYPES = frozenset({"InferenceBatchRecorded"})
"""Event types stored in the inference topic (the fold checks only their own stream)."""
REGISTRY, INFERENCE = "registry", "inference"
_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,200}")

_MAGIC = b"MT\x01"
_COUNT = struct.Struct(">I")
# event_id, stream_version, recorded_at, then the lengths of type, stream, namespace,
# actor, prev_hash, hash, schema and payload; the variable parts follow in that order.
_HEAD = struct.Struct(">16sqqHHHHBBBI")


def position_of(offset: int, index: int) -> int:
    """The position of the event at ``index`` in the record at ``offset``."""
    return (offset << INDEX_BITS) | (index + 1)


def offset_of(position: int) -> int:
    """The offset of the record holding the event at ``position``."""
    return position >> INDEX_BITS


def encode_record(events: Sequence[Event]) -> bytes:
    """One batch as record bytes: a magic prefix, a count, then each envelope."""
    parts = [_MAGIC, _COUNT.pack(len(events))]
    pack = _HEAD.pack
    for e in events:
        type_, stream = e.type.encode(), e.stream.encode()
        namespace, actor = e.namespace.encode(), e.actor.encode()
        try:
            head = pack(
                e.event_id.bytes,
                e.stream_version,
                e.recorded_at,
                len(type_),
                len(stream),
                len(namespace),
                len(actor),
                len(e.prev_hash),
                len(e.hash),
                len(e.schema),
                len(e.payload),
            )
        except struct.error as exc:
            raise InvalidInput(
                f"{e.type} event for {e.stream[:80]!r} does not fit a Kafka record: a type, "
                "stream, namespace or actor holds at most 65,535 bytes and a hash 255"
            ) from exc
        parts += (head, type_, stream, namespace, actor, e.prev_hash, e.hash, e.schema, e.payload)
    return b"".join(parts)


def decode_record(value: bytes, partition: str, offset: int, appended_at: int) -> list[Event]:
    """The events of a record, placed at their positions; IntegrityError on bad bytes."""
    where = f"Kafka record {partition}@{offset}"
    start = len(_MAGIC) + _COUNT.size
    if not value.startswith(_MAGIC) or len(value) < start:
        raise IntegrityError(f"{where} is not a modeltrail batch (its first bytes differ)")
    (count,) = _COUNT.unpack_from(value, len(_MAGIC))
    size, at, first = len(value), start, position_of(offset, 0)
    unpack, head_size = _HEAD.unpack_from, _HEAD.size
    events = []
    try:
        for index in range(count):
            id_, version, recorded_at, lt, ls, ln, la, lp, lh, lsc, lpl = unpack(value, at)
            at += head_size
            if at + lt + ls + ln + la + lp + lh + lsc + lpl > size:
                raise IntegrityError(f"{where} is truncated in event {index} of {count}")
            type_ = value[at : at + lt].decode()
            at += lt
            stream = value[at : at + ls].decode()
            at += ls
            namespace = value[at : at + ln].decode()
            at += ln
            actor = value[at : at + la].decode()
            at += la
            prev_hash = value[at : at + lp]
            at += lp
            hash_ = value[at : at + lh]
            at += lh
            schema = value[at : at + lsc]
            at += lsc
            payload = value[at : at + lpl]
            at += lpl
            events.append(
                Event(
                    uuid.UUID(bytes=id_),
                    type_,
                    stream,
                    version,
                    namespace,
                    recorded_at,
                    actor,
                    prev_hash,
                    hash_,
                    schema,
                    payload,
                    first + index,
                    partition,
                    appended_at,
                )
            )
    except (struct.error, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{where} is corrupt: {exc}") from exc
    if at != size:
        raise IntegrityError(f"{where} has {size - at} bytes after its last event")
    if not events:
        raise IntegrityError(f"{where} holds no events")
    return events


def placed(events: Sequence[Event], partition: str, offset: int, appended_at: int) -> list[Event]:
    """The events of the record at ``offset``, at their positions."""
    first = position_of(offset, 0)
    return [e.at(first + i, appended_at, partition) for i, e in enumerate(events)]


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record as the projector sees it: its events, or why they cannot be read."""

    partition: str
    offset: int
    appended_at: int
    events: tuple[Event, ...] = ()
    error: str | None = None

    @property
    def position(self) -> int:
        """The position of the record's first event (where a bad record is recorded)."""
        return position_of(self.offset, 0)


class Pending:
    """An append on its way to the broker; ``result`` waits for the acknowledgement."""

    def __init__(self, log: KafkaLog, events: Sequence[Event], future: Any) -> None:
        self._log = log
        self._events = events
        self._future = future

    def result(self) -> list[Event]:
        """The events placed at their positions, once the broker has acknowledged them."""
        meta = self._log._call(
            lambda: self._future.get(timeout=self._log.timeout_s + 5),
            "append was not acknowledged",
        )
        partition = self._log.partition_name(meta.topic, meta.partition)
        return placed(self._events, partition, meta.offset, meta.timestamp * 1000)


class KafkaLog(EventLog):
    """The log as two Kafka topics; see the module docstring for positions and order."""

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        *,
        prefix: str = "modeltrail",
        partitions: int = 4,
        timeout_s: float = 30.0,
    ) -> None:
        if not _PREFIX.fullmatch(prefix):
            raise InvalidName(
                f"Kafka topic prefix {prefix!r} is invalid: prefixes match [A-Za-z0-9._-]{{1,200}}"
            )
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.partitions = partitions
        self.timeout_s = timeout_s
        self.topics = {REGISTRY: f"{prefix}.{REGISTRY}", INFERENCE: f"{prefix}.{INFERENCE}"}
        self._kinds = {topic: kind for kind, topic in self.topics.items()}
        self._producer: Any = None
        self._topics_ready = False

    # -- topics and partitions ------------------------------------------------------

    def ensure_topics(self) -> None:
        """Creates the topics when missing: unlimited retention, broker append times."""
        from kafka import KafkaAdminClient

        admin = self._call(
            lambda: KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                request_timeout_ms=int(self.timeout_s * 1000),
                # opening a registry while the broker is away should not hang for long
                bootstrap_timeout_ms=int(min(self.timeout_s, 5) * 1000),
            ),
            "cannot reach the broker",
        )
        try:
            configs = {
                "retention.ms": "-1",
                "retention.bytes": "-1",
                "message.timestamp.type": "LogAppendTime",
                "max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES),
            }
            spec = {"num_partitions": self.partitions, "replication_factor": 1, "configs": configs}
            self._call(
                lambda: admin.create_topics(
                    dict.fromkeys(self.topics.values(), spec),
                    raise_errors=False,  # an existing topic is fine: it keeps its settings
                    wait_for_metadata=True,
                ),
                "cannot create topics",
            )
        finally:
            admin.close()
        self._topics_ready = True

    def partition_name(self, topic: str, partition: int) -> str:
        return f"{self._kinds[topic]}-{partition}"

    def topic_partition(self, name: str) -> Any:
        from kafka import TopicPartition

        kind, _, number = name.rpartition("-")
        if kind not in self.topics or not number.isdigit():
            raise InvalidInput(
                f"partition {name!r} is not one of this log's: names are registry-N or inference-N"
            )
        return TopicPartition(self.topics[kind], int(number))

    def partition_names(self) -> list[str]:
        """Every partition of both topics, registry first."""
        consumer = self._consumer()
        try:
            names = []
            for kind in (REGISTRY, INFERENCE):
                found = self._call(
                    lambda kind=kind: consumer.partitions_for_topic(self.topics[kind]),
                    "cannot read topic metadata",
                )
                if not found:
                    raise LogUnavailable(
                        f"topic {self.topics[kind]!r} does not exist on {self.bootstrap}: "
                        "open the log once with topic creation (KafkaLog.ensure_topics)"
                    )
                names += [f"{kind}-{n}" for n in sorted(found)]
            return names
        finally:
            consumer.close()

    def end_offsets(self, names: Sequence[str] | None = None) -> dict[str, int]:
        """The next offset to be written in each partition."""
        names = list(names) if names is not None else self.partition_names()
        consumer = self._consumer()
        try:
            tps = [self.topic_partition(n) for n in names]
            ends = self._call(
                lambda: consumer.end_offsets(tps, timeout_ms=int(self.timeout_s * 1000)),
                "cannot read end offsets",
            )
            return {n: int(ends[tp]) for n, tp in zip(names, tps, strict=True)}
        finally:
            consumer.close()

    # -- appending -------------------------------------------------------------------

    def route(self, events: Sequence[Event]) -> tuple[str, bytes]:
        """The topic and key of a batch; a batch must fit in one partition."""
        inference = [e.type in INFERENCE_TYPES for e in events]
        if all(inference):
            keys = {e.stream.removeprefix("inference:") for e in events}
            kind = INFERENCE
        elif any(inference):
            raise InvalidInput(
                "a batch mixes InferenceBatchRecorded events with registry events: on Kafka "
                "they go to different topics, so append them separately"
            )
        else:
            keys = {e.namespace for e in events}
            kind = REGISTRY
        if len(keys) != 1:
            raise InvalidInput(
                f"a batch spans {len(keys)} {'streams' if kind == INFERENCE else 'namespaces'} "
                f"({', '.join(sorted(keys)[:5])}): on Kafka one append goes to one partition, "
                "keyed by namespace (inference: by stream)"
            )
        return self.topics[kind], keys.pop().encode()

    def submit(self, events: Sequence[Event]) -> Pending:
        """Sends a batch as one record without waiting for it (pipelined appends)."""
        if not events:
            raise InvalidInput("an append needs at least one event")
        if len(events) > MAX_RECORD_EVENTS:
            raise InvalidInput(
                f"a batch of {len(events):,} events is over the limit of {MAX_RECORD_EVENTS:,} "
                "per append on the Kafka log (a position keeps 20 bits for the index within "
                "its record): split it"
            )
        topic, key = self.route(events)
        if not self._topics_ready:  # opened while the broker was away
            self.ensure_topics()
        value = encode_record(events)
        if len(value) > MAX_RECORD_BYTES:
            raise InvalidInput(
                f"a batch of {len(events):,} events encodes to {len(value):,} bytes, over the "
                f"limit of {MAX_RECORD_BYTES:,} bytes per Kafka record: split it"
            )
        producer = self._producer_()
        future = self._call(lambda: producer.send(topic, key=key, value=value), "cannot send")
        return Pending(self, list(events), future)

    def append(self, events: Sequence[Event]) -> list[Event]:
        """Appends a batch as one record; returns the events at their positions.

        Conflicting claims and retried batches are stored like any other: the projector
        rejects or recognises them (so a retry after a lost acknowledgement is safe)."""
        if not events:
            return []
        return self.submit(events).result()

    def flush(self) -> None:
        if self._producer is not None:
            self._call(lambda: self._producer.flush(timeout=self.timeout_s), "cannot flush")

    # -- reading ---------------------------------------------------------------------

    def records(
        self, ranges: Mapping[str, tuple[int, int]], *, max_records: int = 2000
    ) -> Iterator[Record]:
        """The records of each partition from its start offset up to (not including) its
        stop offset, in offset order per partition; partitions are read together."""
        wanted = {n: (start, stop) for n, (start, stop) in ranges.items() if stop > start}
        if not wanted:
            return
        consumer = self._consumer()
        try:
            tps = {self.topic_partition(n): n for n in wanted}
            consumer.assign(list(tps))
            for tp, name in tps.items():
                consumer.seek(tp, wanted[name][0])
            left = set(tps)
            deadline = time.monotonic() + self.timeout_s
            while left:
                batch = self._call(
                    lambda: consumer.poll(timeout_ms=200, max_records=max_records),
                    "cannot read",
                )
                if batch:
                    deadline = time.monotonic() + self.timeout_s
                elif time.monotonic() > deadline:
                    raise LogUnavailable(
                        f"reading {', '.join(sorted(tps[tp] for tp in left))} from "
                        f"{self.bootstrap} made no progress in {self.timeout_s:.0f}s"
                    )
                for tp, found in batch.items():
                    name = tps[tp]
                    stop = wanted[name][1]
                    for message in found:
                        if message.offset >= stop:
                            break
                        yield self.record(name, message.offset, message.timestamp, message.value)
                    if consumer.position(tp) >= stop or (found and found[-1].offset >= stop - 1):
                        left.discard(tp)
                        consumer.pause(tp)
        finally:
            consumer.close()

    @staticmethod
    def record(partition: str, offset: int, timestamp_ms: int, value: bytes | None) -> Record:
        """A consumed Kafka record, decoded (a bad one keeps its error instead)."""
        appended_at = timestamp_ms * 1000
        try:
            events = decode_record(value or b"", partition, offset, appended_at)
        except IntegrityError as exc:
            return Record(partition, offset, appended_at, error=f"IntegrityError: {exc}")
        return Record(partition, offset, appended_at, tuple(events))

    def read(
        self,
        *,
        after: int | None = None,
        until: int | None = None,
        where: LogFilter = NO_FILTER,
        query: Any = None,
    ) -> Iterator[Event]:
        """Every stored event with ``after < position <= until`` in its partition: one
        partition after another, each in log order. Undecodable records are skipped
        (the projector records them as rejected)."""
        ends = self.end_offsets()
        for name in ends:
            start = 0 if not after else offset_of(after)
            stop = ends[name] if until is None else min(ends[name], offset_of(until) + 1)
            for record in self.records({name: (start, stop)}):
                for event in record.events:
                    if (
                        (not after or event.position > after)
                        and (until is None or event.position <= until)
                        and where.matches(event)
                    ):
                        yield event

    def tail(
        self,
        *,
        after: int | None = None,
        where: LogFilter = NO_FILTER,
        idle_s: float | None = None,
    ) -> Iterator[Event]:
        """Events as they land in any partition (after ``after`` in each, else from now)."""
        names = self.partition_names()
        consumer = self._consumer()
        try:
            tps = {self.topic_partition(n): n for n in names}
            consumer.assign(list(tps))
            for tp in tps:
                if after is None:
                    consumer.seek_to_end(tp)
                else:
                    consumer.seek(tp, offset_of(after))

            def fetch() -> Iterator[Event] | None:
                batch = self._call(lambda: consumer.poll(timeout_ms=100), "cannot read")
                if not batch:
                    return None
                return (
                    event
                    for tp, found in batch.items()
                    for m in found
                    for event in self.record(tps[tp], m.offset, m.timestamp, m.value).events
                    if (after is None or event.position > after) and where.matches(event)
                )

            yield from poll_tail(fetch, idle_s=idle_s, poll_s=0)  # poll waits by itself
        finally:
            consumer.close()

    def heads(self) -> dict[str, int]:
        """The position of the last event of each partition (0 when empty)."""
        ends = self.end_offsets()
        heads = dict.fromkeys(ends, 0)
        last = {n: (end - 1, end) for n, end in ends.items() if end > 0}
        for record in self.records(last):
            heads[record.partition] = position_of(record.offset, max(len(record.events), 1) - 1)
        return heads

    def head(self, query: Any = None) -> int:
        """The largest position of any partition: as ``until`` it includes every event."""
        return max(self.heads().values(), default=0)

    def stream_head(self, stream: str) -> StreamHead:
        """The last stored event of a stream, by scanning the log; the projection's
        ``stream_heads`` table is the fast (and accepted-only) answer."""
        head = EMPTY_STREAM
        for event in self.read(where=LogFilter(streams=frozenset([stream]))):
            head = StreamHead(event.stream_version, event.hash)
        return head

    def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.close(timeout=self.timeout_s)

    # -- clients ---------------------------------------------------------------------

    def _producer_(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer

            timeout_ms = int(self.timeout_s * 1000)
            self._producer = self._call(
                lambda: KafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=0,
                    max_request_size=TOPIC_MAX_MESSAGE_BYTES,
                    max_block_ms=timeout_ms,
                    request_timeout_ms=min(timeout_ms, 30_000),
                    # After this the future fails for good, so a caller who saw an error
                    # knows the producer stopped retrying; a retry is then its own.
                    delivery_timeout_ms=timeout_ms,
                ),
                "cannot connect a producer",
            )
        return self._producer

    def _consumer(self) -> Any:
        from kafka import KafkaConsumer

        return self._call(
            lambda: KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                group_id=None,
                request_timeout_ms=int(self.timeout_s * 1000) + 1000,
                fetch_max_wait_ms=100,
            ),
            "cannot connect a reader",
        )

    def group_consumer(
        self,
        group_id: str,
        topics: Sequence[str],
        *,
        listener: Any = None,
        **overrides: Any,
    ) -> Any:
        """A consumer of group ``group_id`` for ``topics`` with the settings this log's groups
        share (``overrides``: KafkaConsumer options on top); ``LogUnavailable`` when a topic
        does not exist. Offsets are committed by hand and a partition the group never
        committed starts at its beginning.

        With ``listener`` it is subscribed to ``topics`` and its metadata refreshed, so
        it joins on its first poll knowing the topics' partitions (a group leader that
        assigns before its metadata names them assigns nothing, and the group rebalances
        again at once). Without, it is not subscribed: it can commit offsets outside the
        group's generations, as a new group's start offsets are committed before any
        member joins."""
        from kafka import KafkaConsumer

        settings: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "group_id": group_id,
            "client_id": f"{group_id}-member",
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "fetch_max_wait_ms": 50,
            # short enough that a stopped member's partitions move on soon
            "session_timeout_ms": 10_000,
            "request_timeout_ms": int(self.timeout_s * 1000) + 1000,
        } | overrides
        settings.setdefault("heartbeat_interval_ms", min(1000, settings["session_timeout_ms"] // 3))
        consumer = self._call(
            lambda: KafkaConsumer(**settings), f"cannot join consumer group {group_id!r}"
        )
        try:
            for topic in topics:
                if not self._call(
                    lambda topic=topic: consumer.partitions_for_topic(topic), "cannot read topics"
                ):
                    raise LogUnavailable(
                        f"topic {topic!r} does not exist on {self.bootstrap}: open the registry "
                        "once (it creates the topics) before starting its consumers"
                    )
            if listener is not None:
                self._call(
                    lambda: consumer.subscribe(list(topics), listener=listener), "cannot subscribe"
                )
                self._call(consumer.topics, "cannot read topics")
        except BaseException:
            consumer.close(autocommit=False)
            raise
        return consumer

    def _call(self, action: Any, what: str) -> Any:
        """Runs a client call; the broker's failures become ``LogUnavailable``."""
        import kafka.errors as kerrors

        try:
            return action()
        except kerrors.KafkaTimeoutError as exc:  # also how 3.x reports "no broker answers"
            raise LogUnavailable(
                f"Kafka at {self.bootstrap}: {what}: {type(exc).__name__}: {exc}. "
                "Retrying the same batch is safe: the projector recognises it by its event ids"
            ) from exc
        except kerrors.KafkaError as exc:
            if getattr(exc, "retriable", False) or isinstance(exc, kerrors.KafkaConnectionError):
                raise LogUnavailable(
                    f"Kafka at {self.bootstrap}: {what}: {type(exc).__name__}: {exc}"
                ) from exc
            raise
