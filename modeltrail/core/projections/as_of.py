"""``as_of``: the projections as they were at a position, in an in-memory database.

The log is folded up to the position in memory (from the nearest snapshot when one
exists) and written into a private in-memory SQLite database, so the same read model
that answers questions about the present answers them about the past.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from modeltrail.core.db import LiteReader
from modeltrail.core.projections.state import MemoryState, Spec


def memory_query(state: MemoryState, specs: Sequence[Spec]) -> LiteReader:
    import sqlalchemy as sa
    from sqlalchemy.pool import StaticPool

    from modeltrail.core.projections.ddl import define_tables

    connection = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    engine = sa.create_engine("sqlite://", creator=lambda: connection, poolclass=StaticPool)
    metadata = sa.MetaData()
    define_tables(metadata, specs)
    metadata.create_all(engine)
    connection.execute("BEGIN")
    for spec in specs:
        connection.executemany(spec.insert_sql, state.rows(spec))
    connection.execute("COMMIT")
    return LiteReader(connection)
