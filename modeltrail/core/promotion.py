"""Promotion-rule commands: set the rules, force a protected alias, record a refusal.

The rules themselves are enforced by the ``promotion`` fold (see
``core/projections/promotion.py``); these commands only emit the events around them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from modeltrail.core.batch import Batch
from modeltrail.core.db import Query
from modeltrail.core.events.envelope import to_datetime
from modeltrail.core.projections.promotion import PROMOTION_RULES, PromotionRulesRow, rules_of
from modeltrail.core.projections.tables import ALIASES
from modeltrail.core.refs import Target, check_alias, model_stream, registered_stream
from modeltrail.errors import InvalidInput, PromotionRefused


@dataclass(frozen=True)
class PromotionRules:
    """The promotion rules of a model or registered model."""

    owner: str
    stages: tuple[str, ...]
    """aliases in promotion order: each points only at versions that held the one before"""
    protected: tuple[str, ...]
    """aliases that, once set, move or go only with ``force=True``"""
    set_at: datetime | None
    actor: str | None


def read_rules(query: Query, namespace: str, owner_kind: str, owner: str) -> PromotionRules:
    found = query.one(PROMOTION_RULES.select_sql, (namespace, owner_kind, owner))
    ref = f"{namespace}/{owner}"
    if found is None:
        return PromotionRules(ref, (), (), None, None)
    row = PromotionRulesRow._make(found)
    return PromotionRules(
        ref,
        tuple(json.loads(row.stages)),
        tuple(json.loads(row.protected)),
        to_datetime(row.set_at),
        row.set_by,
    )


def owner_stream(owner_kind: str, namespace: str, owner: str) -> str:
    if owner_kind == "model":
        return model_stream(namespace, owner)
    return registered_stream(namespace, owner)


def set_rules(
    b: Batch,
    owner_kind: str,
    namespace: str,
    owner: str,
    stages: Sequence[str],
    protected: Sequence[str],
) -> None:
    for what, names in (("stages", stages), ("protected", protected)):
        if isinstance(names, str):
            raise InvalidInput(f"{what} {names!r} is invalid: pass a list of aliases")
    b.emit(
        "PromotionRulesSet",
        owner_stream(owner_kind, namespace, owner),
        namespace,
        {
            "owner_kind": owner_kind,
            "owner": owner,
            "stages": [check_alias(a) for a in stages],
            "protected": [check_alias(a) for a in protected],
        },
    )


def override_protection(
    b: Batch, owner_kind: str, namespace: str, owner: str, alias: str, target: Target | None
) -> None:
    """Emits the override a forced move (or removal, ``target`` None) of ``alias`` needs:
    only when the alias is protected and set now, so an unneeded force leaves no trace."""
    _, protected = rules_of(b.state, namespace, owner_kind, owner)
    if (
        alias not in protected
        or b.state.get(ALIASES, (namespace, owner_kind, owner, alias)) is None
    ):
        return
    b.emit(
        "ProtectionOverridden",
        owner_stream(owner_kind, namespace, owner),
        namespace,
        {
            "owner_kind": owner_kind,
            "owner": owner,
            "alias": alias,
            "to_namespace": None if target is None else target.namespace,
            "to_model": None if target is None else target.model,
            "to_index": None if target is None else target.index,
        },
    )


def record_refusal(b: Batch, refused: PromotionRefused) -> None:
    """Records a refused move as an event of its own (the refused batch left nothing)."""
    target = refused.target
    b.emit(
        "AliasMoveRefused",
        owner_stream(refused.owner_kind, refused.namespace, refused.owner),
        refused.namespace,
        {
            "owner_kind": refused.owner_kind,
            "owner": refused.owner,
            "alias": refused.alias,
            "to_namespace": None if target is None else target[0],
            "to_model": None if target is None else target[1],
            "to_index": None if target is None else target[2],
            "rule": refused.rule,
            "reason": str(refused),
        },
    )
