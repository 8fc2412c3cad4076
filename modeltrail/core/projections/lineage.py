"""Lineage: which run produced a version (kept on the version row), which versions a run
used, and which versions a version was derived from."""

from __future__ import annotations

from typing import Any

from modeltrail.core.events.envelope import Event
from modeltrail.core.projections.fold import Projection
from modeltrail.core.projections.state import State
from modeltrail.core.projections.tables import CONSUMED, DERIVED, ConsumedRow, DerivedRow
from modeltrail.core.refs import Ref, version_index
from modeltrail.errors import InvalidName


def version_consumed(state: State, e: Event, d: dict[str, Any]) -> None:
    state.put(
        CONSUMED,
        ConsumedRow(
            e.namespace,
            d["model"],
            d["run"],
            d["used_namespace"],
            d["used_model"],
            d["used_index"],
            e.recorded_at,
        ),
    )


def version_logged(state: State, e: Event, d: dict[str, Any]) -> None:
    for text in d["derived_from"]:
        source = Ref.parse(text)
        index = version_index(source.selector)
        if source.namespace is None or index is None:
            raise InvalidName(f"derived_from {text!r} must name a version as namespace/model:vN")
        state.put(
            DERIVED,
            DerivedRow(e.namespace, d["model"], d["index"], source.namespace, source.name, index),
        )


LINEAGE = Projection(
    "lineage",
    (CONSUMED, DERIVED),
    {"VersionConsumed": version_consumed, "VersionLogged": version_logged},
)
