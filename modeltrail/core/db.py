"""Database access shared by the SQL log and the projections.

SQLAlchemy owns engines, pooling, dialects and DDL. Statements on hot paths are plain
SQL with ``?`` placeholders run on the driver's own cursor: a primary-key lookup costs
about 3 µs that way against 16 µs through a compiled SQLAlchemy statement, and the
same text runs on SQLite and (with ``?`` turned into ``%s``) on psycopg.

Reads of an embedded SQLite home go through the standard library's ``sqlite3`` alone,
so a command line that only reads never pays the 0.15 s it takes to import SQLAlchemy.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any, Literal, Protocol

from modeltrail.errors import LogUnavailable

if TYPE_CHECKING:
    import sqlalchemy as sa

Durability = Literal["normal", "full"]
Row = tuple[Any, ...]


class Query(Protocol):
    """Runs read statements written with ``?`` placeholders."""

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...


@cache
def _to_format_style(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///…`` URL, or None for any other database."""
    prefix = "sqlite:///"
    return url[len(prefix) :] if url.startswith(prefix) else None


class Tx:
    """One open transaction: reads and writes on the driver cursor of its connection."""

    def __init__(self, connection: sa.Connection, dialect: str) -> None:
        self.connection = connection
        self.dialect = dialect
        self._cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        self._convert = _to_format_style if dialect != "sqlite" else (lambda sql: sql)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cursor.execute(self._convert(sql), params)
        return list(self._cursor.fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        self._cursor.execute(self._convert(sql), params)
        row: Row | None = self._cursor.fetchone()
        return row

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(self._convert(sql), params)

    def run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cursor.executemany(self._convert(sql), rows)


CACHE_PRAGMAS = ("PRAGMA cache_size=-65536", "PRAGMA mmap_size=268435456")
"""64 MiB of page cache and 256 MiB of memory-mapped reads per connection. SQLite's
default 2 MiB cache is outgrown by the index of random event ids at a few hundred
thousand events; past that every append and replay reads index pages from disk (a
1,000,000-event log loaded 5x slower with it)."""


class LiteReader:
    """Read-only statements on an SQLite connection through the standard library alone."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    @classmethod
    def open(cls, path: str, timeout_s: float) -> LiteReader:
        connection = sqlite3.connect(
            f"file:{path}?mode=ro",
            uri=True,
            timeout=timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        for pragma in CACHE_PRAGMAS:
            connection.execute(pragma)
        return cls(connection)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._connection.execute(sql, params).fetchall()

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self._connection.execute(sql, params).fetchone()
        return row

    def close(self) -> None:
        self._connection.close()


class Database:
    """A database URL with modeltrail's settings; the engine is made on first write."""

    def __init__(self, url: str, *, durability: Durability = "normal", timeout_s: float = 30.0):
        self.url = url
        self.durability = durability
        self.timeout_s = timeout_s
        self.path = sqlite_path(url)
        scheme = url.split(":", 1)[0]
        self.dialect = "sqlite" if self.path is not None else scheme.split("+", maxsplit=1)[0]
        self._engine: sa.Engine | None = None
        self._local = threading.local()

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A write transaction; on SQLite it takes the write lock at BEGIN, so the reads
        that decide a command and the writes that record it see one state."""
        try:
            with self.engine.connect() as plain:
                connection = plain.execution_options(modeltrail_write=True)
                with connection.begin():
                    yield Tx(connection, self.dialect)
        except Exception as exc:
            unavailable = _unavailable(exc)
            if unavailable is None:
                raise
            raise unavailable from exc

    @contextmanager
    def snapshot(self) -> Iterator[Query]:
        """A consistent read of many statements: every statement sees the one committed
        state the first one saw (an SQLite read transaction; REPEATABLE READ on
        PostgreSQL, whose default READ COMMITTED gives each statement a fresh view)."""
        if self.path is not None:
            reader = self._lite_reader()
            reader.rows("BEGIN")
            try:
                yield reader
            finally:
                reader.rows("COMMIT")
            return
        with self.engine.connect() as plain:
            connection = plain.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                yield Tx(connection, self.dialect)

    def reader(self) -> Query:
        """Statements that each see the latest committed state."""
        if self.path is not None:
            return self._lite_reader()
        return _EngineReader(self)

    def exists(self) -> bool:
        from pathlib import Path

        return self.path is None or Path(self.path).exists()

    def dispose(self) -> None:
        reader = getattr(self._local, "reader", None)
        if reader is not None:
            reader.close()
            self._local.reader = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _lite_reader(self) -> LiteReader:
        reader: LiteReader | None = getattr(self._local, "reader", None)
        if reader is None:
            assert self.path is not None
            reader = LiteReader.open(self.path, self.timeout_s)
            self._local.reader = reader
        return reader

    def _make_engine(self) -> sa.Engine:
        import sqlalchemy as sa

        if self.path is None:
            return sa.create_engine(self.url, pool_pre_ping=True)
        engine = sa.create_engine(self.url, connect_args={"timeout": self.timeout_s})
        _configure_sqlite(engine, self.durability, self.timeout_s)
        return engine


class _EngineReader:
    def __init__(self, database: Database) -> None:
        self._database = database

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._database.engine.connect() as connection:
            return Tx(connection, self._database.dialect).rows(sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with self._database.engine.connect() as connection:
            return Tx(connection, self._database.dialect).one(sql, params)


def _configure_sqlite(engine: sa.Engine, durability: Durability, timeout_s: float) -> None:
    """WAL, the chosen synchronous level, and BEGIN IMMEDIATE for writers.

    pysqlite opens transactions lazily and never with IMMEDIATE, so two processes that
    read and then write can deadlock on the lock upgrade; SQLAlchemy's documented cure
    is to switch the driver's handling off and emit BEGIN ourselves.
    """
    from sqlalchemy import event

    synchronous = {"normal": "NORMAL", "full": "FULL"}[durability]

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        for pragma in CACHE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        write = connection.get_execution_options().get("modeltrail_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _unavailable(exc: Exception) -> LogUnavailable | None:
    """A locked or unreachable database, as the error trainers spool on."""
    if type(exc).__name__ != "OperationalError":  # sqlite3's, psycopg's and SQLAlchemy's
        return None
    text = str(exc).lower()
    if "database is locked" in text or "could not connect" in text or "connection refused" in text:
        return LogUnavailable(f"the database cannot be written now: {exc}")
    return None
