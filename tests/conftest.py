"""Shared fixtures: a fresh embedded registry per test, a clock tests can move, a team
over Kafka, a webhook endpoint. (Shared helpers are in tests/helpers.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import modeltrail as mt
from tests.helpers import Endpoint, Team, serve_endpoint

pytest_plugins = ["tests.services"]


class ManualClock:
    """A clock that moves only when told to (UTC microseconds)."""

    def __init__(self, start: int = 1_767_225_600_000_000) -> None:  # 2026-01-01
        self.now = start

    def __call__(self) -> int:
        self.now += 1  # distinct times for distinct commands, like a real clock
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1_000_000)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def reg(home: Path, clock: ManualClock) -> Iterator[mt.Registry]:
    registry = mt.open(home, actor="alice", namespace="team", clock=clock)
    yield registry
    registry.close()


@pytest.fixture
def team(
    kafka_bootstrap: str, kafka_prefix: str, pg_database: str, tmp_path: Path
) -> Iterator[Team]:
    """Registries over a real Kafka broker and PostgreSQL; no projector runs until
    ``team.start_projector()``."""
    made = Team(kafka_bootstrap, kafka_prefix, pg_database, tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    """A real HTTP server on 127.0.0.1 that records the webhooks POSTed to it."""
    with serve_endpoint() as served:
        yield served
