"""Tables kept beside the log that are not projections: cursors, secrets, snapshots.

A rebuild replaces every projection table with a fresh fold of the log, so state that is
not derived from the log (where a subscriber got to, a webhook's secret) or that only
speeds replays up (snapshots) lives in tables of its own, created on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from modeltrail.core.db import Database

if TYPE_CHECKING:
    import sqlalchemy as sa

_created: set[tuple[str, str]] = set()
_lock = threading.Lock()


def ensure_table(database: Database, define: Callable[[sa.MetaData], sa.Table]) -> None:
    """Creates the table ``define`` describes when it is missing (once per process)."""
    import sqlalchemy as sa

    metadata = sa.MetaData()
    table = define(metadata)
    key = (database.url, table.name)
    with _lock:
        if key in _created and database.exists():
            return
        with database.transaction() as tx:
            if tx.dialect == "postgresql":
                tx.run("SELECT pg_advisory_xact_lock(7400193)")  # one creator at a time
            metadata.create_all(tx.connection, checkfirst=True)
        _created.add(key)
