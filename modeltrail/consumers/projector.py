"""The projector worker: keeps a projection database up to date with a Kafka log.

Workers join one consumer group over both topics, so the partitions are shared out
among however many run (each partition to one worker at a time; a worker that stops
hands its partitions to the others). For every poll a worker applies the records in one
transaction of the projection database, checkpoints included (``KafkaEngine.apply``),
and commits the Kafka offsets only after that transaction: the offsets in Kafka are
for monitoring tools, the checkpoints in the database are what counts. On assignment a
worker seeks each partition to the record after its stored checkpoint, so a worker
killed at any moment, even with SIGKILL in the middle of a transaction, resumes exactly
where the last commit left the projection.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from kafka import ConsumerRebalanceListener

from modeltrail.consumers.signals import on_signals
from modeltrail.core.events.kafka_log import offset_of
from modeltrail.core.kafka_engine import KafkaEngine
from modeltrail.errors import LogUnavailable

log = logging.getLogger(__name__)

DEFAULT_GROUP = "modeltrail-projector"


class Projector:
    """One worker of a projector group; ``run`` until ``stop`` is set."""

    def __init__(
        self,
        engine: KafkaEngine,
        *,
        group: str = DEFAULT_GROUP,
        max_records: int = 2000,
        poll_ms: int = 100,
        session_timeout_ms: int = 10_000,
    ) -> None:
        self.engine = engine
        self.group = group
        self.max_records = max_records
        self.poll_ms = poll_ms
        self.session_timeout_ms = session_timeout_ms
        self.applied = 0
        """Records applied by this worker so far."""
        self._stop = threading.Event()

    def stop(self) -> None:
        """Asks ``run`` to return after the batch in hand (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def wait(self, seconds: float) -> None:
        """Sleeps, waking early when stopped."""
        self._stop.wait(seconds)

    def run(self, *, idle_s: float | None = None) -> int:
        """Consumes and applies until stopped (or ``idle_s`` without a record); returns
        the number of records applied. Leaves the group cleanly on the way out."""
        kafka = self.engine.kafka
        seeker = _Seeker(self)
        consumer = kafka.group_consumer(
            self.group,
            list(kafka.topics.values()),
            listener=seeker,
            client_id=f"{self.group}-worker",
            max_poll_records=self.max_records,
            session_timeout_ms=self.session_timeout_ms,
        )
        seeker.consumer = consumer
        try:
            idle_since = time.monotonic()
            while not self._stop.is_set():
                batch = consumer.poll(timeout_ms=self.poll_ms, max_records=self.max_records)
                if not batch:
                    if idle_s is not None and time.monotonic() - idle_since >= idle_s:
                        break
                    continue
                idle_since = time.monotonic()
                records = [
                    kafka.record(
                        kafka.partition_name(tp.topic, tp.partition),
                        m.offset,
                        m.timestamp,
                        m.value,
                    )
                    for tp, messages in batch.items()
                    for m in messages
                ]
                reseek = self.engine.apply(records)
                for partition, offset in reseek.items():
                    consumer.seek(kafka.topic_partition(partition), offset)
                self.applied += len(records)
                self._commit(consumer)
        finally:
            with contextlib.suppress(Exception):  # leaving anyway: the database counts
                consumer.commit()
            consumer.close()
        return self.applied

    def _commit(self, consumer: Any) -> None:
        # Asynchronous: Kafka's offsets are for monitoring; the projection's checkpoints,
        # committed with its rows, are what a worker resumes from. A failed commit (a
        # rebalance in progress) is only logged; the next one covers it.
        consumer.commit_async(callback=_log_commit_failure)

    def seek_to_checkpoints(self, consumer: Any, assigned: Any) -> None:
        done = self.engine.checkpoints()
        mine = {}
        for tp in assigned:
            name = self.engine.kafka.partition_name(tp.topic, tp.partition)
            mine[name] = done.get(name, 0)
            if done.get(name):
                consumer.seek(tp, offset_of(done[name]) + 1)
            else:
                consumer.seek_to_beginning(tp)
        self.engine.adopt(mine)


def _log_commit_failure(offsets: Any, response: Any) -> None:
    if isinstance(response, Exception):
        log.info("offset commit skipped (%s); the projection's checkpoints are intact", response)


class _Seeker(ConsumerRebalanceListener):  # type: ignore[misc]
    """Seeks newly assigned partitions to the projection's checkpoints (of ``consumer``,
    set once it exists: assignments come only from its polls)."""

    def __init__(self, projector: Projector) -> None:
        self.projector = projector
        self.consumer: Any = None

    def on_partitions_revoked(self, revoked: Any) -> None:
        pass  # every applied batch is already committed, in the database and in Kafka

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.projector.seek_to_checkpoints(self.consumer, assigned)


def run_worker(engine: KafkaEngine, *, group: str = DEFAULT_GROUP, max_records: int = 2000) -> int:
    """Runs one worker in the foreground until SIGINT or SIGTERM (each stops it once the
    batch in hand is applied)."""
    projector = Projector(engine, group=group, max_records=max_records)
    with on_signals(projector.stop):
        while not projector.stopped:
            try:
                projector.run()
            except LogUnavailable as exc:  # broker away: keep trying, the data waits
                log.warning("%s; retrying in 2 s", exc)
                projector.wait(2.0)
    return projector.applied
