"""SQL tables for projection specs, made with SQLAlchemy so every dialect gets its types."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from modeltrail.core.projections.state import Spec

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
