"""Promotion rules: stages an alias must pass in order, and aliases that move only with force.

The rules are checked here, in the fold, so they hold in log order whoever writes and
however many writers race: every check is a primary-key lookup. ``alias_held`` remembers
every (alias, version) pair that ever was, so "this version held ``staging``" is one
lookup; it is filled from the beginning of the log, before any rule exists, so rules set
later judge the whole history.

A forced move of a protected alias is two events in one batch: ``ProtectionOverridden``
(which leaves a one-time override row) and the ``AliasMoved`` or ``AliasRemoved`` that
consumes it. The override is therefore in the audit trail with its actor.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from modeltrail.core.events.envelope import Event
from modeltrail.core.projections.fold import Projection, dumps
from modeltrail.core.projections.state import Spec, State
from modeltrail.core.projections.tables import MODELS, REGISTERED
from modeltrail.core.refs import check_alias
from modeltrail.errors import InvalidInput, NotFound, PromotionRefused

Data = dict[str, Any]


class PromotionRulesRow(NamedTuple):
    namespace: str
    owner_kind: str
    owner: str
    stages: str
    protected: str
    set_at: int
    set_by: str


class AliasHeldRow(NamedTuple):
    namespace: str
    owner_kind: str
    owner: str
    alias: str
    target_namespace: str
    target_model: str
    target_idx: int


class OverrideRow(NamedTuple):
    namespace: str
    owner_kind: str
    owner: str
    alias: str
    to_namespace: str | None
    to_model: str | None
    to_idx: int | None
    position: int


PROMOTION_RULES = Spec("promotion_rules", PromotionRulesRow, ("namespace", "owner_kind", "owner"))
ALIAS_HELD = Spec(
    "alias_held",
    AliasHeldRow,
    (
        "namespace",
        "owner_kind",
        "owner",
        "alias",
        "target_namespace",
        "target_model",
        "target_idx",
    ),
)
OVERRIDES = Spec("protection_overrides", OverrideRow, ("namespace", "owner_kind", "owner", "alias"))


def rules_of(
    state: State, namespace: str, owner_kind: str, owner: str
) -> tuple[list[str], list[str]]:
    """(stages, protected) of an owner; empty lists when it has no rules."""
    row: PromotionRulesRow | None = state.get(PROMOTION_RULES, (namespace, owner_kind, owner))
    if row is None:
        return [], []
    return json.loads(row.stages), json.loads(row.protected)


def rules_set(state: State, e: Event, d: Data) -> None:
    kind, owner = d["owner_kind"], d["owner"]
    spec = MODELS if kind == "model" else REGISTERED
    if state.get(spec, (e.namespace, owner)) is None:
        what = "model" if kind == "model" else "registered model"
        raise NotFound(f"{what} {e.namespace}/{owner} does not exist")
    for field in ("stages", "protected"):
        names = [check_alias(a) for a in d[field]]
        if len(set(names)) != len(names):
            raise InvalidInput(
                f"{field} {names} of {e.namespace}/{owner} name an alias twice: "
                "each alias appears once"
            )
    key = (e.namespace, kind, owner)
    if not d["stages"] and not d["protected"]:
        state.delete(PROMOTION_RULES, key)
        return
    state.put(
        PROMOTION_RULES,
        PromotionRulesRow(
            *key, dumps(list(d["stages"])), dumps(list(d["protected"])), e.recorded_at, e.actor
        ),
    )


def protection_overridden(state: State, e: Event, d: Data) -> None:
    state.put(
        OVERRIDES,
        OverrideRow(
            e.namespace,
            d["owner_kind"],
            d["owner"],
            d["alias"],
            d["to_namespace"],
            d["to_model"],
            d["to_index"],
            e.position,
        ),
    )


def alias_moved(state: State, e: Event, d: Data) -> None:
    kind, owner, alias = d["owner_kind"], d["owner"], d["alias"]
    target = (d["to_namespace"], d["to_model"], d["to_index"])
    stages, protected = rules_of(state, e.namespace, kind, owner)
    where = f"{e.namespace}/{owner}"
    refusal = {
        "namespace": e.namespace,
        "owner_kind": kind,
        "owner": owner,
        "alias": alias,
        "target": target,
    }
    if alias in stages and stages.index(alias) > 0:
        before = stages[stages.index(alias) - 1]
        if state.get(ALIAS_HELD, (e.namespace, kind, owner, before, *target)) is None:
            raise PromotionRefused(
                f"alias {alias!r} of {where} cannot move to {_label(target)}: that version "
                f"never held {before!r}, and the promotion stages of {where} are "
                f"{' → '.join(stages)} (rule: stages in order)",
                rule="stages",
                **refusal,
            )
    if alias in protected and d["from_model"] is not None:
        _consume_override(state, e, d, target, "move", refusal)
    else:
        state.delete(OVERRIDES, (e.namespace, kind, owner, alias))
    key = (e.namespace, kind, owner, alias, *target)
    if state.get(ALIAS_HELD, key) is None:
        state.put(ALIAS_HELD, AliasHeldRow(*key))


def alias_removed(state: State, e: Event, d: Data) -> None:
    kind, owner, alias = d["owner_kind"], d["owner"], d["alias"]
    _, protected = rules_of(state, e.namespace, kind, owner)
    if alias in protected:
        refusal = {
            "namespace": e.namespace,
            "owner_kind": kind,
            "owner": owner,
            "alias": alias,
            "target": None,
        }
        _consume_override(state, e, d, (None, None, None), "removal", refusal)
    else:
        state.delete(OVERRIDES, (e.namespace, kind, owner, alias))


def _consume_override(
    state: State,
    e: Event,
    d: Data,
    target: tuple[Any, Any, Any],
    what: str,
    refusal: dict[str, Any],
) -> None:
    key = (e.namespace, d["owner_kind"], d["owner"], d["alias"])
    override: OverrideRow | None = state.get(OVERRIDES, key)
    if override is None or (override.to_namespace, override.to_model, override.to_idx) != target:
        destination = "" if target[1] is None else f" to {_label(target)}"
        raise PromotionRefused(
            f"alias {d['alias']!r} of {e.namespace}/{d['owner']} is protected: its {what}"
            f"{destination} needs force=True (rule: protected aliases)",
            rule="protected",
            **refusal,
        )
    state.delete(OVERRIDES, key)


def _label(target: tuple[Any, Any, Any]) -> str:
    return f"{target[0]}/{target[1]}:v{target[2]}"


PROMOTION = Projection(
    "promotion",
    (PROMOTION_RULES, ALIAS_HELD, OVERRIDES),
    {
        "PromotionRulesSet": rules_set,
        "ProtectionOverridden": protection_overridden,
        "AliasMoved": alias_moved,
        "AliasRemoved": alias_removed,
    },
)
