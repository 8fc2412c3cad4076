"""Alias history: every move and removal of every alias, with its actor and time.

MLflow overwrites an alias in place; here the current alias table is the last row of
this history, and ``alias_history`` answers "who moved production, from what, when".
"""

from __future__ import annotations

from typing import Any

from modeltrail.core.events.envelope import Event
from modeltrail.core.projections.fold import Projection
from modeltrail.core.projections.state import State
from modeltrail.core.projections.tables import ALIAS_MOVES, AliasMoveRow


def alias_moved(state: State, e: Event, d: dict[str, Any]) -> None:
    state.put(ALIAS_MOVES, _move(e, d, (d["to_namespace"], d["to_model"], d["to_index"])))


def alias_removed(state: State, e: Event, d: dict[str, Any]) -> None:
    state.put(ALIAS_MOVES, _move(e, d, (None, None, None)))


def _move(
    e: Event, d: dict[str, Any], to: tuple[str | None, str | None, int | None]
) -> AliasMoveRow:
    return AliasMoveRow(
        e.namespace,
        d["owner_kind"],
        d["owner"],
        d["alias"],
        e.position,
        d["from_namespace"],
        d["from_model"],
        d["from_index"],
        *to,
        e.recorded_at,
        e.actor,
    )


ALIAS_HISTORY = Projection(
    "alias_history",
    (ALIAS_MOVES,),
    {"AliasMoved": alias_moved, "AliasRemoved": alias_removed},
)
