"""The service fixtures hand out working servers (tests/services.py, scripts/services.py)."""

from __future__ import annotations

import time
from typing import Any

import kafka
import pytest
import sqlalchemy

pytestmark = pytest.mark.services

# Generous bounds: the first group join also creates __consumer_offsets.
DEADLINE_S = 60.0


# --------------------------------------------------------------------------------------------
# PostgreSQL


def test_pg_database_roundtrip(pg_database: str) -> None:
    engine = sqlalchemy.create_engine(pg_database)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE item (id serial PRIMARY KEY, name text)"))
            conn.execute(
                sqlalchemy.text("INSERT INTO item (name) VALUES (:name)"),
                [{"name": "alpha"}, {"name": "beta"}],
            )
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT id, name FROM item ORDER BY id")).all()
            encoding = conn.execute(sqlalchemy.text("SHOW server_encoding")).scalar_one()
    finally:
        engine.dispose()
    assert [tuple(row) for row in rows] == [(1, "alpha"), (2, "beta")]
    assert encoding == "UTF8"


def test_pg_database_is_fresh_and_separate(pg_database: str, postgres_url: str) -> None:
    assert pg_database != postgres_url
    assert pg_database.startswith("postgresql+psycopg://")
    engine = sqlalchemy.create_engine(pg_database)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == []
        with engine.connect() as conn:
            name = conn.execute(sqlalchemy.text("SELECT current_database()")).scalar_one()
    finally:
        engine.dispose()
    assert pg_database.endswith(f"/{name}")


def test_postgres_url_answers(postgres_url: str) -> None:
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------
# Kafka


def _create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = kafka.KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics(
            {
                topic: {
                    "num_partitions": partitions,
                    "replication_factor": 1,
                    "configs": {"retention.ms": "-1"},
                }
            },
            wait_for_metadata=True,
        )
        resource = kafka.admin.ConfigResource(kafka.admin.ConfigResourceType.TOPIC, topic)
        configs = admin.describe_configs([resource])
    finally:
        admin.close()
    assert configs["topic"][topic]["retention.ms"]["value"] == "-1"


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> list[int]:
    producer = kafka.KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    try:
        futures = [producer.send(topic, key=b"k", value=value) for value in values]
        producer.flush(timeout=30)
        return [future.get(timeout=30).offset for future in futures]
    finally:
        producer.close()


def _poll_until(consumer: Any, count: int, max_records: int | None = None) -> list[Any]:
    records: list[Any] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(records) < count and time.monotonic() < deadline:
        wanted = max_records if max_records is not None else count - len(records)
        for batch in consumer.poll(timeout_ms=500, max_records=wanted).values():
            records.extend(batch)
    return records


def test_kafka_produce_and_read_back_from_offset_zero(
    kafka_bootstrap: str, kafka_prefix: str
) -> None:
    topic = f"{kafka_prefix}events"
    _create_topic(kafka_bootstrap, topic)
    values = [f"event-{i}".encode() for i in range(20)]

    assert _produce(kafka_bootstrap, topic, values) == list(range(20))

    partition = kafka.TopicPartition(topic, 0)
    consumer = kafka.KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    try:
        assert consumer.end_offsets([partition]) == {partition: 20}
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        records = _poll_until(consumer, 20)
    finally:
        consumer.close()
    assert [r.offset for r in records] == list(range(20))
    assert [r.value for r in records] == values


def test_kafka_consumer_group_resumes_after_commit(kafka_bootstrap: str, kafka_prefix: str) -> None:
    topic = f"{kafka_prefix}grouped"
    group = f"{kafka_prefix}group"
    _create_topic(kafka_bootstrap, topic)
    _produce(kafka_bootstrap, topic, [f"m{i}".encode() for i in range(10)])

    def member() -> Any:
        return kafka.KafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    first = member()
    try:
        seen = _poll_until(first, 4, max_records=4)
        assert [r.offset for r in seen] == [0, 1, 2, 3]
        first.commit()  # commits the position: the next offset to read, 4
        assert first.committed(kafka.TopicPartition(topic, 0)) == 4
    finally:
        first.close()  # leaves the group at once, so the next member needs no session timeout

    second = member()
    try:
        rest = _poll_until(second, 6)
    finally:
        second.close()
    assert [r.offset for r in rest] == [4, 5, 6, 7, 8, 9]
    assert [r.value for r in rest] == [f"m{i}".encode() for i in range(4, 10)]
