"""Promotion rules: stages in order, protected aliases, and refusals in the audit trail."""

from __future__ import annotations

from pathlib import Path

import pytest

import modeltrail as mt
from modeltrail.core.batch import Batch
from modeltrail.errors import (
    InvalidInput,
    InvalidName,
    NotFound,
    PermissionDenied,
    PromotionRefused,
)
from tests.conftest import ManualClock
from tests.helpers import log_versions


def _refusals(reg: mt.Registry) -> list[dict[str, object]]:
    return [e.data for e in reg.audit(types=["AliasMoveRefused"])]


def test_a_later_stage_needs_a_version_that_held_the_stage_before(reg: mt.Registry) -> None:
    log_versions(reg, "m", 2)
    rules = reg.set_promotion_rules("m", stages=["staging", "production"])
    assert rules.stages == ("staging", "production")
    reg.set_alias("m:v0", "staging")
    reg.set_alias("m:v0", "production")

    with pytest.raises(PromotionRefused, match="never held 'staging'") as refused:
        reg.set_alias("m:v1", "production")
    assert refused.value.rule == "stages"
    assert "staging → production" in str(refused.value)
    assert reg.model("m").aliases["production"] == "v0"

    reg.set_alias("m:v1", "staging")
    reg.set_alias("m:v1", "production")
    assert reg.model("m").aliases["production"] == "v1"


def test_an_out_of_order_promotion_is_in_the_audit_trail(reg: mt.Registry) -> None:
    log_versions(reg, "m", 1)
    reg.set_promotion_rules("m", stages=["staging", "production"])
    head = reg.head()
    with pytest.raises(PromotionRefused):
        reg.set_alias("m:v0", "production")
    [event] = list(reg.events(after=head))
    assert (event.type, event.actor, event.stream) == ("AliasMoveRefused", "alice", "model:team/m")
    assert event.data["rule"] == "stages"
    assert (event.data["alias"], event.data["to_model"], event.data["to_index"]) == (
        "production",
        "m",
        0,
    )
    assert "never held 'staging'" in event.data["reason"]
    assert reg.alias_history("m", "production") == []


def test_a_version_logged_straight_into_a_later_stage_is_refused(reg: mt.Registry) -> None:
    log_versions(reg, "m", 1)
    reg.set_promotion_rules("m", stages=["staging", "production"])
    with pytest.raises(PromotionRefused, match="rule: stages in order"):
        reg.log_version("m", {"w": b"new"}, aliases=["production"])
    assert [v.label for v in reg.versions("m")] == ["v0"]  # the whole batch rolled back
    assert len(_refusals(reg)) == 1


def test_a_protected_alias_moves_only_with_force(reg: mt.Registry) -> None:
    log_versions(reg, "m", 3)
    reg.set_promotion_rules("m", protected=["production"])
    reg.set_alias("m:v0", "production")  # setting it the first time moves nothing

    with pytest.raises(PromotionRefused, match="is protected: its move to team/m:v1 needs force"):
        reg.set_alias("m:v1", "production")
    assert reg.model("m").aliases["production"] == "v0"
    [refusal] = _refusals(reg)
    assert refusal["rule"] == "protected"

    head = reg.head()
    reg.set_alias("m:v1", "production", force=True)
    assert reg.model("m").aliases["production"] == "v1"
    forced = list(reg.events(after=head))
    assert [e.type for e in forced] == ["ProtectionOverridden", "AliasMoved"]
    assert forced[0].actor == "alice"
    assert forced[0].data["to_index"] == 1

    with pytest.raises(PromotionRefused):  # the override was used up by that one move
        reg.set_alias("m:v2", "production")


def test_force_on_an_unprotected_alias_leaves_no_override(reg: mt.Registry) -> None:
    log_versions(reg, "m", 2)
    reg.set_alias("m:v0", "staging", force=True)
    reg.set_alias("m:v1", "staging", force=True)
    assert reg.audit(types=["ProtectionOverridden"]) == []


def test_removing_a_protected_alias_needs_force_too(reg: mt.Registry) -> None:
    log_versions(reg, "m", 1)
    reg.set_alias("m:v0", "production")
    reg.set_promotion_rules("m", protected=["production"])
    with pytest.raises(PromotionRefused, match="its removal needs force"):
        reg.remove_alias("m", "production")
    reg.remove_alias("m", "production", force=True)
    assert "production" not in reg.model("m").aliases
    assert [r["to_model"] for r in _refusals(reg)] == [None]


def test_rules_of_a_registered_model_judge_its_own_aliases(reg: mt.Registry) -> None:
    log_versions(reg, "m", 2)
    reg.link("m:v0", "classifier", aliases=["staging"])
    reg.link("m:v1", "classifier")
    reg.set_promotion_rules(
        "classifier", stages=["staging", "production"], protected=["production"]
    )
    reg.set_alias("m:v1", "staging")  # the model's own staging: not the registered model's
    with pytest.raises(PromotionRefused, match="of team/classifier"):
        reg.set_alias("classifier:v1", "production")
    reg.set_alias("classifier:v0", "production")
    assert reg.registered("classifier").aliases["production"] == "team/m:v0"
    assert reg.promotion_rules("team/classifier").protected == ("production",)
    assert reg.promotion_rules("m").stages == ()


def test_versions_that_held_a_stage_before_the_rules_existed_qualify(reg: mt.Registry) -> None:
    log_versions(reg, "m", 2)
    reg.set_alias("m:v1", "staging")
    reg.set_alias("m:v0", "staging")
    reg.set_promotion_rules("m", stages=["staging", "production"])
    reg.set_alias("m:v1", "production")
    assert reg.model("m").aliases["production"] == "v1"


def test_the_fold_enforces_the_rules_whatever_a_command_decides(reg: mt.Registry) -> None:
    """An AliasMoved emitted without going through set_alias is refused all the same, so
    the rule holds in log order for every writer."""
    log_versions(reg, "m", 1)
    reg.set_promotion_rules("m", stages=["staging", "production"])
    engine = reg._require_engine()

    def raw_move(b: Batch) -> None:
        b.emit(
            "AliasMoved",
            "model:team/m",
            "team",
            {
                "owner_kind": "model",
                "owner": "m",
                "alias": "production",
                "to_namespace": "team",
                "to_model": "m",
                "to_index": 0,
            },
        )

    with pytest.raises(PromotionRefused):
        engine.write(raw_move, actor="alice")


def test_rules_survive_a_rebuild_and_replay_to_the_same_state(reg: mt.Registry) -> None:
    log_versions(reg, "m", 2)
    reg.set_promotion_rules("m", stages=["staging", "production"], protected=["production"])
    reg.set_alias("m:v0", "staging")
    reg.set_alias("m:v0", "production")
    reg.set_alias("m:v1", "staging")
    reg.set_alias("m:v1", "production", force=True)
    with pytest.raises(PromotionRefused):
        reg.set_alias("m:v0", "production")
    live = reg.export()
    reg.rebuild()
    assert reg.export() == live
    assert reg.verify().ok
    past = reg.as_of(reg.head())
    assert past.promotion_rules("m").stages == ("staging", "production")


def test_another_writer_sees_rules_set_after_it_opened(home: Path, clock: ManualClock) -> None:
    first = mt.open(home, actor="alice", namespace="team", clock=clock)
    second = mt.open(home, actor="bob", namespace="team", clock=clock)
    try:
        log_versions(first, "m", 1)
        first.set_promotion_rules("m", stages=["staging", "production"])
        with pytest.raises(PromotionRefused):
            second.set_alias("m:v0", "production")
        assert _refusals(first)[0]["rule"] == "stages"
        assert first.audit(types=["AliasMoveRefused"])[0].actor == "bob"
    finally:
        first.close()
        second.close()


def test_bad_rules_are_refused_naming_the_rule(reg: mt.Registry) -> None:
    log_versions(reg, "m", 1)
    with pytest.raises(InvalidName, match="reserved"):
        reg.set_promotion_rules("m", stages=["latest", "production"])
    with pytest.raises(InvalidInput, match="name an alias twice"):
        reg.set_promotion_rules("m", stages=["staging", "staging"])
    with pytest.raises(InvalidInput, match="pass a list"):
        reg.set_promotion_rules("m", protected="production")
    with pytest.raises(NotFound):
        reg.set_promotion_rules("nothing", stages=["a", "b"])
    assert isinstance(PromotionRefused("x"), PermissionDenied)


def test_empty_rules_lift_them(reg: mt.Registry) -> None:
    log_versions(reg, "m", 2)
    reg.set_promotion_rules("m", stages=["staging", "production"], protected=["production"])
    reg.set_promotion_rules("m")
    assert reg.promotion_rules("m").stages == ()
    reg.set_alias("m:v1", "production")


def test_the_command_line_moves_a_protected_alias_only_with_force(tmp_path: Path) -> None:
    from tests.test_cli import cli

    home = tmp_path / "home"
    reg = mt.open(home, actor="alice", namespace="team")
    reg.log_version("m", {"w": b"1"}, aliases=["production"])
    reg.log_version("m", {"w": b"2"})
    reg.set_promotion_rules("m", protected=["production"])
    refused = cli(home, "alias", "set", "m:v1", "production", check=False)
    assert refused.returncode == 2 and "PromotionRefused" in refused.stderr
    cli(home, "alias", "set", "m:v1", "production", "--force")
    assert reg.get("m:production").label == "v1"
    cli(home, "alias", "rm", "m", "production", "--force")
    assert "production" not in reg.model("m").aliases
