"""SQL tables for projection specs, made with SQLAlchemy so every dialect gets its types,
and the setup both engines share: create what is missing, recreate the projection
tables when their shape changed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from modeltrail.core.db import Database, Tx
from modeltrail.core.projections.state import Spec
from modeltrail.errors import InvalidInput

if TYPE_CHECKING:
    import sqlalchemy as sa


def define_tables(metadata: sa.MetaData, specs: Sequence[Spec]) -> list[sa.Table]:
    import sqlalchemy as sa

    sql_types: dict[type, Any] = {
        str: sa.Text(),
        int: sa.BigInteger(),
        float: sa.Float(),
        bytes: sa.LargeBinary(),
    }
    tables = []
    for spec in specs:
        columns = [
            sa.Column(
                name,
                sql_types[py_type],
                primary_key=name in spec.key,
                nullable=nullable,
                autoincrement=False,
            )
            for name, (py_type, nullable) in spec.column_types().items()
        ]
        # Clustered on the primary key: a rowid table would keep the key in a second
        # B-tree and pay for both on every write (and a rebuild writes every row).
        table = sa.Table(spec.name, metadata, *columns, sqlite_with_rowid=False)
        for number, columns_ in enumerate(spec.indexes):
            sa.Index(f"ix_{spec.name}_{number}", *(table.c[c] for c in columns_))
        tables.append(table)
    return tables


def schema_fingerprint(specs: Sequence[Spec]) -> str:
    """Changes whenever a projection table's shape changes, which calls for a rebuild."""
    text = repr(
        [(s.name, s.key, s.indexes, sorted(s.column_types().items(), key=str)) for s in specs]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


META_TABLE = "modeltrail_meta"
"""Key/value rows that say what a database holds: the projections' shape, for which log."""
SCHEMA_LOCK = 7400192
"""The PostgreSQL advisory lock one schema creator holds at a time."""


def stored_meta(database: Database, key: str) -> str | None:
    """A meta value as committed (None: no database, no meta table, or no such row),
    read without a write transaction."""
    if not database.exists():
        return None
    try:
        row = database.reader().one(f"SELECT value FROM {META_TABLE} WHERE key = ?", (key,))
    except Exception:  # no meta table yet: a new database
        return None
    return None if row is None else str(row[0])


def ensure_projection_schema(
    database: Database,
    specs: Sequence[Spec],
    *,
    key: str,
    value: str,
    refused: Mapping[str, str],
    define_more: Callable[[sa.MetaData], object] | None = None,
    check_stored: Callable[[str], None] | None = None,
    then: Callable[[Tx, bool], None] | None = None,
) -> None:
    """Creates the meta table, the tables ``define_more`` defines and the projection
    tables of ``specs`` when missing; when the meta row ``key`` holds another ``value``
    (the tables' shape changed), drops and recreates the projection tables empty.

    Returns at once, without a write transaction, when ``key`` holds ``value`` already.
    ``refused`` maps meta keys this database must not hold to the error's message;
    ``check_stored`` may refuse a stored value before anything is dropped; ``then`` runs
    in the same transaction, told whether the tables were recreated."""
    if stored_meta(database, key) == value:
        return
    import sqlalchemy as sa

    with database.transaction() as tx:
        if tx.dialect == "postgresql":
            tx.run(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")  # one creator at a time
        metadata = sa.MetaData()
        sa.Table(
            META_TABLE,
            metadata,
            sa.Column("key", sa.String(64), primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )
        if define_more is not None:
            define_more(metadata)
        tables = define_tables(metadata, specs)
        metadata.create_all(tx.connection)
        for other, message in refused.items():
            if tx.one(f"SELECT value FROM {META_TABLE} WHERE key = ?", (other,)) is not None:
                raise InvalidInput(message)
        stored = tx.one(f"SELECT value FROM {META_TABLE} WHERE key = ?", (key,))
        if stored is not None and stored[0] == value:
            return  # another process got here first
        if stored is not None:
            if check_stored is not None:
                check_stored(str(stored[0]))
            for table in reversed(tables):
                table.drop(tx.connection, checkfirst=True)
            metadata.create_all(tx.connection, tables=tables)
        tx.run(f"DELETE FROM {META_TABLE} WHERE key = ?", (key,))
        tx.run(f"INSERT INTO {META_TABLE} (key, value) VALUES (?, ?)", (key, value))
        if then is not None:
            then(tx, stored is not None)
