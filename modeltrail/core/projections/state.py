"""Keyed tables that folds read and write, with three homes for them.

A fold sees a ``State``: ``get`` a row by primary key, ``put`` a row, ``delete`` a key.
That narrow surface is what lets one fold run everywhere:

- ``MemoryState`` holds every row in dicts: rebuilds and ``as_of`` fold there at memory
  speed and write the result once, in bulk;
- ``SqlState`` reads rows from an open transaction on first use and buffers writes
  until ``flush``, so a command or a projector batch costs one ``executemany`` per table;
- ``Overlay`` buffers over another state and is either committed or dropped whole,
  which is how a rejected batch leaves no trace.
"""

from __future__ import annotations

import types
import typing
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from operator import itemgetter
from typing import Any, NamedTuple, Protocol

from modeltrail.core.db import Query, Tx

Key = tuple[Any, ...]
RowT = Any  # a NamedTuple of some Spec's row type


@dataclass(frozen=True, eq=False)  # identity hash: specs are dict keys on hot paths
class Spec:
    """A projection table: its row type (a NamedTuple), primary key and extra indexes."""

    name: str
    row: type[NamedTuple]
    key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()
    columns: tuple[str, ...] = field(init=False)
    key_index: tuple[int, ...] = field(init=False)
    key_of: Callable[[RowT], Key] = field(init=False, repr=False)
    """The primary key of a row, as a tuple (the hottest call of every fold)."""

    def __post_init__(self) -> None:
        columns = tuple(self.row._fields)
        key_index = tuple(columns.index(k) for k in self.key)
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "key_index", key_index)
        if len(key_index) == 1:
            only = key_index[0]
            object.__setattr__(self, "key_of", lambda row: (row[only],))
        else:
            object.__setattr__(self, "key_of", itemgetter(*key_index))

    def column_types(self) -> dict[str, tuple[type, bool]]:
        """Each column's Python type and whether it may be None."""
        hints = typing.get_type_hints(self.row)
        result: dict[str, tuple[type, bool]] = {}
        for name in self.columns:
            hint = hints[name]
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            nullable = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
            result[name] = (args[0] if nullable else hint, nullable)
        return result

    @cached_property
    def select_sql(self) -> str:
        where = " AND ".join(f"{k} = ?" for k in self.key)
        return f"SELECT {', '.join(self.columns)} FROM {self.name} WHERE {where}"

    @cached_property
    def upsert_sql(self) -> str:
        placeholders = ", ".join("?" * len(self.columns))
        others = [c for c in self.columns if c not in self.key]
        action = (
            "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in others)
            if others
            else "DO NOTHING"
        )
        return (
            f"INSERT INTO {self.name} ({', '.join(self.columns)}) VALUES ({placeholders}) "
            f"ON CONFLICT ({', '.join(self.key)}) {action}"
        )

    @cached_property
    def insert_sql(self) -> str:
        placeholders = ", ".join("?" * len(self.columns))
        return f"INSERT INTO {self.name} ({', '.join(self.columns)}) VALUES ({placeholders})"

    @cached_property
    def delete_sql(self) -> str:
        return f"DELETE FROM {self.name} WHERE " + " AND ".join(f"{k} = ?" for k in self.key)


class State(Protocol):
    def get(self, spec: Spec, key: Key) -> RowT | None: ...

    def put(self, spec: Spec, row: RowT) -> None: ...

    def delete(self, spec: Spec, key: Key) -> None: ...


class MemoryState:
    """Every row in memory; the home of rebuilds and ``as_of``."""

    def __init__(self) -> None:
        self.tables: defaultdict[Spec, dict[Key, RowT]] = defaultdict(dict)

    def get(self, spec: Spec, key: Key) -> RowT | None:
        return self.tables[spec].get(key)

    def put(self, spec: Spec, row: RowT) -> None:
        self.tables[spec][spec.key_of(row)] = row

    def delete(self, spec: Spec, key: Key) -> None:
        self.tables[spec].pop(key, None)

    def rows(self, spec: Spec) -> list[RowT]:
        return list(self.tables[spec].values())

    def journal(self) -> MemoryJournal:
        return MemoryJournal(self)


_DELETED = None


class Overlay:
    """Buffers changes over a base state until ``commit`` (or until dropped)."""

    def __init__(self, base: State) -> None:
        self.base = base
        self.changes: dict[Spec, dict[Key, RowT | None]] = {}

    def get(self, spec: Spec, key: Key) -> RowT | None:
        table = self.changes.get(spec)
        if table is not None and key in table:
            return table[key]
        return self.base.get(spec, key)

    def put(self, spec: Spec, row: RowT) -> None:
        self.changes.setdefault(spec, {})[spec.key_of(row)] = row

    def delete(self, spec: Spec, key: Key) -> None:
        self.changes.setdefault(spec, {})[key] = _DELETED

    def commit(self) -> None:
        for spec, table in self.changes.items():
            for key, row in table.items():
                if row is _DELETED:
                    self.base.delete(spec, key)
                else:
                    self.base.put(spec, row)
        self.changes.clear()

    def keep(self) -> None:
        """Commits (the name a ``Journal`` has for it, so either can be a scratch state)."""
        self.commit()

    def rollback(self) -> None:
        """Drops the buffered changes; the overlay can be used again."""
        self.changes.clear()


class Journal:
    """Writes straight through to a state and remembers how to undo them.

    Cheaper than an ``Overlay`` when almost every change is kept (a replay, where a
    refused event is rare): a write costs one extra lookup, and only a rollback pays.
    """

    _ABSENT = object()

    def __init__(self, base: State) -> None:
        self.base = base
        self._undo: list[tuple[Spec, Key, object]] = []

    def get(self, spec: Spec, key: Key) -> RowT | None:
        return self.base.get(spec, key)

    def put(self, spec: Spec, row: RowT) -> None:
        key = spec.key_of(row)
        self._remember(spec, key)
        self.base.put(spec, row)

    def delete(self, spec: Spec, key: Key) -> None:
        self._remember(spec, key)
        self.base.delete(spec, key)

    def keep(self) -> None:
        self._undo.clear()

    def rollback(self) -> None:
        for spec, key, old in reversed(self._undo):
            if old is self._ABSENT:
                self.base.delete(spec, key)
            else:
                self.base.put(spec, old)
        self._undo.clear()

    def _remember(self, spec: Spec, key: Key) -> None:
        old = self.base.get(spec, key)
        self._undo.append((spec, key, self._ABSENT if old is None else old))


class MemoryJournal(Journal):
    """A ``Journal`` that reaches into a ``MemoryState``'s dicts directly: replays call
    it for every row they write, so each indirection saved is paid a million times."""

    def __init__(self, base: MemoryState) -> None:
        super().__init__(base)
        self._tables = base.tables
        self.get = base.get  # type: ignore[method-assign]

    def put(self, spec: Spec, row: RowT) -> None:
        table = self._tables[spec]
        key = spec.key_of(row)
        self._undo.append((spec, key, table.get(key, self._ABSENT)))
        table[key] = row

    def delete(self, spec: Spec, key: Key) -> None:
        table = self._tables[spec]
        self._undo.append((spec, key, table.pop(key, self._ABSENT)))


class SqlState(Overlay):
    """Rows read from a transaction on first use; writes buffered until ``flush``."""

    def __init__(self, tx: Tx) -> None:
        self.rows = SqlRows(tx)
        super().__init__(self.rows)
        self.tx = tx

    def flush(self) -> None:
        for spec, table in self.changes.items():
            deleted = [key for key, row in table.items() if row is _DELETED]
            written = [row for row in table.values() if row is not _DELETED]
            self.tx.run_many(spec.delete_sql, deleted)
            self._write_rows(spec, written)
            self.rows.remember(spec, table)
        self.changes.clear()

    def _write_rows(self, spec: Spec, rows: list[RowT]) -> None:
        """Upserts the rows a flush writes to one table (a subclass may do it in bulk)."""
        self.tx.run_many(spec.upsert_sql, rows)


class SqlRows:
    """Rows as a transaction or snapshot sees them: one primary-key SELECT per row asked
    for, each remembered. The read side of ``SqlState``, and (under an ``Overlay``) the
    state a command decides on when it may not write the projection."""

    def __init__(self, query: Query) -> None:
        self.query = query
        # Valid for the query's life: a writer holds the log's write lock (and its own
        # writes sit in the overlay above this), a snapshot sees one committed state.
        self._cache: dict[tuple[Spec, Key], RowT | None] = {}

    def get(self, spec: Spec, key: Key) -> RowT | None:
        try:
            return self._cache[spec, key]
        except KeyError:
            found = self.query.one(spec.select_sql, key)
            row = None if found is None else spec.row._make(found)
            self._cache[spec, key] = row
            return row

    def remember(self, spec: Spec, written: dict[Key, RowT | None]) -> None:
        """What a flush wrote is what a later read in the transaction must see."""
        for key, row in written.items():
            self._cache[spec, key] = row

    def put(self, spec: Spec, row: RowT) -> None:
        raise TypeError(f"rows of {spec.name} are written through an overlay, never here")

    def delete(self, spec: Spec, key: Key) -> None:
        raise TypeError(f"rows of {spec.name} are deleted through an overlay, never here")


def write_all(tx: Tx, state: MemoryState, specs: list[Spec]) -> None:
    """Replaces the tables' contents with a memory state's rows, in bulk."""
    for spec in specs:
        tx.run(f"DELETE FROM {spec.name}")
        rows = sorted(state.rows(spec), key=spec.key_of)  # key order makes B-tree inserts cheap
        for start in range(0, len(rows), 10_000):
            tx.run_many(spec.insert_sql, rows[start : start + 10_000])


def read_all(query: Query, spec: Spec) -> Iterator[RowT]:
    order = ", ".join(spec.key)
    for found in query.rows(f"SELECT {', '.join(spec.columns)} FROM {spec.name} ORDER BY {order}"):
        yield spec.row._make(found)
