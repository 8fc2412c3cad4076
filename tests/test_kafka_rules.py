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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import modeltrail as mt
from modeltrail.consumers.projector import Projector
from modeltrail.core.kafka_engine import KafkaEngine
from tests import test_epochs, test_promotion_rules, test_registry
from tests.test_epochs import run_reg  # noqa: F401  (requested by the epoch tests)

REGISTRY_FIXTURES = {"reg", "run_reg"}  # run_reg (test_epochs) builds on the reg below


def _parametrized(test: Callable[..., Any]) -> set[str]:
    """The argument names a test's @pytest.mark.parametrize marks supply."""
    names: set[str] = set()
    for mark in getattr(test, "pytestmark", []):
        if mark.name == "parametrize":
            argnames = mark.args[0]
            if isinstance(argnames, str):
                argnames = [name.strip() for name in argnames.split(",")]
            names.update(argnames)
    return names


def _portable(test: Callable[..., Any]) -> bool:
    """A test that requests a registry and nothing else this module cannot give it."""
    params = set(inspect.signature(test).parameters)
    return bool(params & REGISTRY_FIXTURES) and params <= (
        REGISTRY_FIXTURES | {"tmp_path"} | _parametrized(test)
    )


def _registry_tests() -> dict[str, Callable[..., Any]]:
    return {
        name: test
        for module in (test_registry, test_epochs, test_promotion_rules)
        for name, test in vars(module).items()
        if name.startswith("test_")
        and callable(test)
        and set(inspect.signature(test).parameters) & REGISTRY_FIXTURES
    }


PORTABLE = {name: test for name, test in _registry_tests().items() if _portable(test)}
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
    """Most registry tests run here; the few left out need a file or clock of their own."""
    left_out = set(_registry_tests()) - set(PORTABLE)
    assert len(PORTABLE) >= 55, sorted(PORTABLE)
    assert len(left_out) <= 10, sorted(left_out)
