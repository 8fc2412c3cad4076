"""Helpers shared by several test modules (the shared fixtures are in conftest.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from click.testing import CliRunner, Result

import modeltrail as mt
from modeltrail.cli import main
from modeltrail.consumers.projector import Projector
from modeltrail.consumers.subscriptions import Subscription
from modeltrail.core.db import Database
from modeltrail.core.events.envelope import Event
from modeltrail.core.events.kafka_log import KafkaLog
from modeltrail.core.kafka_engine import KafkaEngine, open_kafka_engine

T = TypeVar("T")

WAIT = 30.0
"""The longest a helper waits for something that should happen."""


# -- registries ---------------------------------------------------------------------------


def log_versions(reg: mt.Registry, model: str, n: int) -> None:
    """Logs versions v0 … v(n-1) of ``model``, each with its own content."""
    for i in range(n):
        reg.log_version(model, {"w": f"{model}-{i}".encode()})


def cli(home: Path, *args: str, actor: str = "alice") -> Result:
    """Runs the modeltrail command in this process, as ``actor`` in namespace ``team``."""
    return CliRunner().invoke(
        main, ["--home", str(home), "--actor", actor, "-n", "team", *args], catch_exceptions=False
    )


class Team:
    """Registries of several actors over one Kafka log and one projection database,
    and a projector worker that can be started and stopped."""

    def __init__(self, bootstrap: str, prefix: str, db: str, home: Path) -> None:
        self.bootstrap, self.prefix, self.db, self.home = bootstrap, prefix, db, home
        self.opened: list[mt.Registry] = []
        self._projector: Projector | None = None
        self._worker: threading.Thread | None = None
        self._engine: KafkaEngine | None = None

    def open(self, actor: str = "alice") -> mt.Registry:
        registry = mt.open(
            self.home / actor,
            kafka=self.bootstrap,
            kafka_prefix=self.prefix,
            db=self.db,
            actor=actor,
            namespace="team",
        )
        self.opened.append(registry)
        return registry

    def cli_options(self) -> list[str]:
        return [
            *("--kafka", self.bootstrap, "--kafka-prefix", self.prefix, "--db", self.db),
            *("--home", str(self.home / "cli")),
        ]

    def kafka(self) -> KafkaLog:
        return KafkaLog(self.bootstrap, prefix=self.prefix)

    def engine(self, db: str | None = None) -> KafkaEngine:
        return open_kafka_engine(Database(db or self.db), self.bootstrap, prefix=self.prefix)

    def start_projector(self) -> None:
        self._engine = self.engine()
        self._projector = Projector(self._engine, group=f"{self.prefix}projector")
        self._worker = threading.Thread(target=self._projector.run, daemon=True)
        self._worker.start()

    def stop_projector(self) -> None:
        if self._projector is not None and self._worker is not None and self._engine:
            self._projector.stop()
            self._worker.join(timeout=30)
            self._engine.close()
        self._projector = self._worker = self._engine = None

    def close(self) -> None:
        self.stop_projector()
        for registry in self.opened:
            registry.close()


# -- threads and Kafka ----------------------------------------------------------------------


def in_thread(action: Callable[[], T]) -> tuple[threading.Thread, list[Any]]:
    """Runs ``action`` in a daemon thread; the list receives its result or its exception."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(action())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_for_records(kafka: KafkaLog, partition: str, count: int, wait: float = 60.0) -> None:
    """Waits until ``partition`` holds ``count`` records (fails after ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    while kafka.end_offsets([partition])[partition] < count:
        assert time.monotonic() < deadline, f"{partition} never held {count} records"
        time.sleep(0.02)


# -- subscriptions --------------------------------------------------------------------------


def take(sub: Subscription, count: int, wait: float = WAIT) -> list[Event]:
    """The next ``count`` events, each waited for up to ``wait`` seconds."""
    found: list[Event] = []
    for _ in range(count):
        event = sub.poll(wait)
        assert event is not None, f"only {len(found)} of {count} events came"
        found.append(event)
    return found


def drain(sub: Subscription, quiet: float = 0.05) -> list[Event]:
    """Every event that comes until none does for ``quiet`` seconds."""
    found: list[Event] = []
    while (event := sub.poll(quiet)) is not None:
        found.append(event)
    return found


def close_ends_a_blocked_poll(sub: Subscription, wait: float = WAIT) -> None:
    """Closes ``sub`` while another thread is blocked in ``poll(None)`` (it has entered the
    feed's poll before the close), and checks that the poll then returns None."""
    feed: Any = sub._feed
    original = feed.poll
    entered = threading.Event()
    before_close: list[bool] = []

    def poll(timeout_s: float | None, stop: threading.Event) -> list[Event]:
        before_close.append(not stop.is_set())
        entered.set()
        return list(original(timeout_s, stop))

    feed.poll = poll
    try:
        waiter, result = in_thread(lambda: sub.poll(None))
        assert entered.wait(wait), "poll never asked the feed"
        assert waiter.is_alive(), f"poll(None) returned {result} before the close"
        assert before_close[0], "the feed was asked only after the close"
        sub.close()
        waiter.join(wait)
        assert not waiter.is_alive(), "close did not end the blocked poll"
        assert result == [None]
    finally:
        del feed.poll


# -- webhooks -------------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Endpoint:
    url: str
    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    """Statuses to answer, in order; 200 once they run out."""

    @property
    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.received]


@contextmanager
def serve_endpoint() -> Iterator[Endpoint]:
    """A real HTTP server on 127.0.0.1 that records what is POSTed to it."""
    state = Endpoint("")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            with lock:
                state.received.append(
                    Received({k.lower(): v for k, v in self.headers.items()}, body)
                )
                status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def verify(secret: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The Standard Webhooks check, written from the specification alone."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = [s.split(",", 1)[1] for s in headers["webhook-signature"].split() if s[:3] == "v1,"]
    if not any(hmac.compare_digest(expected, s) for s in offered):
        raise AssertionError("no signature matches")
    document: dict[str, Any] = json.loads(body)
    return document
