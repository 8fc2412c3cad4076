"""The registry rules (``test_registry.py``) and the epoch and promotion projections'
tests again, on PostgreSQL and over Kafka.

Every test there that needs nothing but a registry (no SQLite file to tamper with,
no hand-moved clock) runs here twice more: on the embedded engine with its log and
projections in PostgreSQL, and on the Kafka engine (a real broker, the projection in
PostgreSQL, a projector worker beside it). Same assertions, same outcomes.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import modeltrail as mt
from modeltrail.consumers.projector import Projector
from modeltrail.core.kafka_engine import KafkaEngine
from tests import test_epochs, test_promotion_rules, test_registry

PORTABLE = {
    name: test
    for module in (test_registry, test_epochs, test_promotion_rules)
    for name, test in vars(module).items()
    if name.startswith("test_")
    and callable(test)
    and set(inspect.signature(test).parameters) <= {"reg", "tmp_path"}
}
globals().update(PORTABLE)


@pytest.fixture(params=["postgres", "kafka"])
def reg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[mt.Registry]:
    db = request.getfixturevalue("pg_database")
    if request.param == "postgres":
        registry = mt.open(tmp_path / "home", db=db, actor="alice", namespace="team")
        yield registry
        registry.close()
        return
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    prefix = request.getfixturevalue("kafka_prefix")
    registry = mt.open(
        tmp_path / "home", kafka=bootstrap, kafka_prefix=prefix, db=db, actor="alice",
        namespace="team",
    )  # fmt: skip
    engine = registry._require_engine()
    assert isinstance(engine, KafkaEngine)
    projector = Projector(engine, group=f"{prefix}projector")
    worker = threading.Thread(target=projector.run, daemon=True)
    worker.start()
    try:
        yield registry
    finally:
        projector.stop()
        worker.join(timeout=30)
        registry.close()


def test_the_portable_rules_are_most_of_them() -> None:
    assert len(PORTABLE) >= 45
