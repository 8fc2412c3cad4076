"""pytest plugin: real PostgreSQL and Kafka servers for integration tests.

Register from tests/conftest.py with ``pytest_plugins = ["tests.services"]``.

Session fixtures ``postgres_url`` / ``kafka_bootstrap`` use MODELTRAIL_TEST_PG /
MODELTRAIL_TEST_KAFKA when set; otherwise they start a private server with
scripts/services.py in a temporary directory and stop it when the session ends. A server
that cannot start skips the tests that need it, or fails them when
MODELTRAIL_REQUIRE_SERVICES=1 (CI sets this so a broken setup cannot pass silently).

Function fixtures: ``pg_database`` (a fresh empty database per test, as a SQLAlchemy URL)
and ``kafka_prefix`` (a unique topic-name prefix per test; its topics are deleted after).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

PG_ENV = "MODELTRAIL_TEST_PG"
KAFKA_ENV = "MODELTRAIL_TEST_KAFKA"
REQUIRE_ENV = "MODELTRAIL_REQUIRE_SERVICES"
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "services.py"


def _services() -> ModuleType:
    """scripts/services.py as a module (scripts/ is not a package, so load it by path)."""
    name = "modeltrail_scripts_services"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0", "false", "no")


def _unavailable(reason: str, details: str = "") -> NoReturn:
    """Skip (or, when services are required, fail) the requesting test."""
    if _required():
        pytest.fail(f"{reason}\n{details}".rstrip(), pytrace=False)
    pytest.skip(reason)


def require_package(name: str) -> ModuleType:
    """Imports an optional package a test needs: skips the test without it, or fails it
    when services are required (CI installs every extra, so a missing one is a setup bug).
    At module level it skips or fails the whole module, like ``pytest.importorskip``."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        reason = f"{name} is not installed: {exc}"
        if _required():
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1)", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


@contextlib.contextmanager
def _service(kind: str) -> Iterator[dict[str, Any]]:
    """Start `kind` in a fresh temporary directory; stop it and delete the directory on exit."""
    services = _services()
    base = Path(tempfile.mkdtemp(prefix=f"modeltrail-{kind}-"))
    state: dict[str, Any] | None = None
    error = ""
    try:
        # owner_pid: if this pytest process is killed outright, a watchdog stops the server.
        state = services.start(kind, base, owner_pid=os.getpid())
    except Exception as exc:  # any failure to start means "no server", never a crash
        error = str(exc).strip() or type(exc).__name__
    if state is None:
        # Outside the except block, so a required-services failure shows no exception chain.
        with contextlib.suppress(Exception):  # a half-started server must not outlive us
            services.stop(kind, base, remove=True)
        shutil.rmtree(base, ignore_errors=True)
        first, _, details = error.partition("\n")
        _unavailable(f"{kind} server could not start: {first}", details)
    try:
        yield state
    finally:
        services.stop(kind, base, remove=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL (postgresql+psycopg://...) of a PostgreSQL server's `modeltrail` db."""
    url = os.environ.get(PG_ENV)
    if url:
        yield url
        return
    with _service("postgres") as state:
        yield str(state["url"])


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address ("127.0.0.1:PORT") of a single-node Kafka broker."""
    bootstrap = os.environ.get(KAFKA_ENV)
    if bootstrap:
        yield bootstrap
        return
    with _service("kafka") as state:
        yield str(state["url"])


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL as a libpq/psycopg conninfo URL (drops the `+driver` part)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme=parts.scheme.split("+", 1)[0]))


@pytest.fixture
def pg_databases(postgres_url: str) -> Iterator[Callable[[], str]]:
    """Makes new, empty databases on demand (their SQLAlchemy URLs); drops them after."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError as exc:
        _unavailable(f"psycopg is not installed: {exc}")
    admin = libpq_url(postgres_url)
    made: list[str] = []

    def make() -> str:
        name = f"test_{uuid.uuid4().hex}"
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.OperationalError as exc:
            _unavailable(f"PostgreSQL at {admin} is not reachable: {exc}".splitlines()[0], str(exc))
        made.append(name)
        return _with_database(postgres_url, name)

    yield make
    if made:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            for name in made:
                # FORCE (PostgreSQL 13+) ends connections a test left open (an undisposed pool).
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


@pytest.fixture
def pg_database(pg_databases: Callable[[], str]) -> str:
    """A new, empty database for this test (its SQLAlchemy URL), dropped afterwards."""
    return pg_databases()


@pytest.fixture
def kafka_prefix(kafka_bootstrap: str) -> Iterator[str]:
    """A unique topic-name prefix ("mt-<12 hex>-") for this test.

    Topics whose names start with it are deleted afterwards (best effort), so a long-lived
    broker given through MODELTRAIL_TEST_KAFKA does not fill up.
    """
    prefix = f"mt-{uuid.uuid4().hex[:12]}-"
    yield prefix
    _delete_topics(kafka_bootstrap, prefix)


def _delete_topics(bootstrap: str, prefix: str) -> None:
    try:
        from kafka import KafkaAdminClient
    except ImportError:
        return
    # Cleanup must never fail a test that passed.
    with contextlib.suppress(Exception):
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            topics = [t for t in admin.list_topics() if t.startswith(prefix)]
            if topics:
                admin.delete_topics(topics, timeout_ms=10_000)
        finally:
            admin.close()
