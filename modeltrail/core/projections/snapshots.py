"""Projection snapshots: the folded state at a position, so replays need not start at 0.

A snapshot is every row of every projection table (bookkeeping included) as it stood
after the event at ``position``, as compressed canonical JSON in ``projection_snapshots``,
a table beside the log (not a projection table: a rebuild must not wipe what speeds it
up). It is used only when it still fits:

- its ``fingerprint`` equals the current one, a hash of the projection tables' shape and
  of the source of every module whose handlers fold (a changed fold could fold the same
  events into other rows, and a rebuild after a fix must not start from the old rows);
- the event at its position still has the hash recorded with it (the log it was taken
  from is the log being replayed).

``as_of`` and rebuilds start from the nearest fitting snapshot at or before their
position and fold the rest of the log, which reaches the same rows as a fold from 0
because folds are deterministic and the snapshot is such a fold's result.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import sys
import zlib
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from modeltrail.core.db import Database, Query
from modeltrail.core.events.envelope import Clock, system_clock
from modeltrail.core.events.log import EventLog
from modeltrail.core.projections.ddl import schema_fingerprint
from modeltrail.core.projections.fold import Folder
from modeltrail.core.projections.runner import Runner
from modeltrail.core.projections.state import MemoryState, Spec
from modeltrail.core.sidetables import ensure_table
from modeltrail.errors import IntegrityError

if TYPE_CHECKING:
    import sqlalchemy as sa

TABLE = "projection_snapshots"


def define_snapshot_table(metadata: sa.MetaData) -> sa.Table:
    import sqlalchemy as sa

    return sa.Table(
        TABLE,
        metadata,
        sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("event_hash", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("row_count", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def encode_state(state: MemoryState, specs: Sequence[Spec]) -> tuple[bytes, int]:
    """Compressed canonical JSON of every row (bytes columns in base64); and the row count."""
    tables: dict[str, list[list[Any]]] = {}
    count = 0
    for spec in specs:
        binary = [i for i, (t, _) in enumerate(spec.column_types().values()) if t is bytes]
        rows = []
        for row in sorted(state.rows(spec), key=spec.key_of):
            values = list(row)
            for i in binary:
                if values[i] is not None:
                    values[i] = base64.b64encode(bytes(values[i])).decode()
            rows.append(values)
        tables[spec.name] = rows
        count += len(rows)
    text = json.dumps(tables, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return zlib.compress(text.encode(), 6), count


def decode_state(data: bytes, specs: Sequence[Spec]) -> MemoryState:
    try:
        tables = json.loads(zlib.decompress(data))
    except (zlib.error, ValueError) as exc:
        raise IntegrityError(f"a projection snapshot does not decode: {exc}") from exc
    state = MemoryState()
    for spec in specs:
        binary = [i for i, (t, _) in enumerate(spec.column_types().values()) if t is bytes]
        for values in tables.get(spec.name, []):
            for i in binary:
                if values[i] is not None:
                    values[i] = base64.b64decode(values[i])
            state.put(spec, spec.row._make(values))
    return state


def fold_fingerprint(folder: Folder, specs: Sequence[Spec]) -> str:
    """A hash of the tables' shape and of the source of the modules the handlers live in."""
    modules = {handler.__module__ for p in folder.projections for handler in p.handlers.values()}
    digest = hashlib.sha256(schema_fingerprint(specs).encode())
    for name in sorted(modules):
        module = sys.modules.get(name)
        try:
            source = inspect.getsource(module) if module is not None else name
        except (OSError, TypeError):
            source = name
        digest.update(name.encode() + b"\0" + source.encode() + b"\0")
    return digest.hexdigest()[:32]


class SqlSnapshots:
    """Snapshots in the database beside the log; what ``Runner.fold_log`` starts from."""

    def __init__(
        self, database: Database, log: EventLog, runner: Runner, clock: Clock = system_clock
    ) -> None:
        self.database = database
        self.log = log
        self.specs = tuple(runner.specs)
        self.folder = runner.folder
        self.clock = clock

    @cached_property
    def fingerprint(self) -> str:
        return fold_fingerprint(self.folder, self.specs)

    def save(self, state: MemoryState, position: int, *, keep: int | None = None) -> int:
        """Stores ``state`` (a fold of the log up to ``position``); keeps the newest ``keep``
        snapshots. Returns the stored size in bytes."""
        event = next(iter(self.log.read(after=position - 1, until=position)), None)
        if event is None:
            raise IntegrityError(f"no event at position {position}: nothing to snapshot there")
        data, count = encode_state(state, self.specs)
        ensure_table(self.database, define_snapshot_table)
        with self.database.transaction() as tx:
            tx.run(f"DELETE FROM {TABLE} WHERE position = ?", (position,))
            tx.run(
                f"INSERT INTO {TABLE} (position, fingerprint, event_hash, created_at, row_count, "
                "data) VALUES (?, ?, ?, ?, ?, ?)",
                (position, self.fingerprint, event.hash, self.clock(), count, data),
            )
            if keep is not None:
                tx.run(
                    f"DELETE FROM {TABLE} WHERE position NOT IN (SELECT position FROM {TABLE} "
                    f"ORDER BY position DESC LIMIT {int(keep)})"
                )
        return len(data)

    def positions(self) -> list[int]:
        if not self._exists(self.database.reader()):
            return []
        rows = self.database.reader().rows(f"SELECT position FROM {TABLE} ORDER BY position")
        return [int(r[0]) for r in rows]

    def nearest(
        self, until: int | None, query: Query | None = None
    ) -> tuple[MemoryState, int] | None:
        """The newest fitting snapshot at or before ``until`` (None: the newest), decoded."""
        reader = query or self.database.reader()
        if not self._exists(reader):
            return None
        bound = "" if until is None else " AND position <= ?"
        rows = reader.rows(
            f"SELECT position, event_hash FROM {TABLE} WHERE fingerprint = ?{bound} "
            "ORDER BY position DESC",
            (self.fingerprint, *(() if until is None else (until,))),
        )
        for position, event_hash in rows:
            found = next(iter(self.log.read(after=position - 1, until=position, query=query)), None)
            if found is None or found.hash != bytes(event_hash):
                continue  # taken from another log (or a log that lost events): unusable
            row = reader.one(f"SELECT data FROM {TABLE} WHERE position = ?", (position,))
            if row is None:
                continue
            return decode_state(bytes(row[0]), self.specs), int(position)
        return None

    def _exists(self, query: Query) -> bool:
        if self.database.dialect == "sqlite":
            sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
            return query.one(sql, (TABLE,)) is not None
        row = query.one("SELECT to_regclass(?)", (TABLE,))
        return row is not None and row[0] is not None
