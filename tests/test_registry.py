"""The registry rules of DESIGN.md §1, each as a user meets it."""

from __future__ import annotations

from pathlib import Path

import pytest

import modeltrail as mt
from modeltrail.errors import (
    AlreadyExists,
    ArchitectureMismatch,
    ConcurrencyConflict,
    IntegrityError,
    InvalidInput,
    InvalidName,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    ReadOnly,
    RunConfigConflict,
)
from tests.conftest import ManualClock


def test_versions_are_numbered_v0_to_vn_in_log_order(reg: mt.Registry) -> None:
    labels = [reg.log_version("m", {"w": bytes([i])}).label for i in range(4)]
    assert labels == ["v0", "v1", "v2", "v3"]
    assert [v.index for v in reg.versions("m")] == [0, 1, 2, 3]
    assert reg.get("m").label == "v3"
    assert reg.model("m").aliases["latest"] == "v3"


def test_an_identical_manifest_creates_no_new_version(reg: mt.Registry) -> None:
    first = reg.log_version("m", {"a": b"1", "b": b"2"})
    again = reg.log_version("m", {"b": b"2", "a": b"1"}, aliases=["best"])
    assert again.label == first.label == "v0"
    assert again.aliases == ("best", "latest")
    assert len(reg.versions("m")) == 1
    changed = reg.log_version("m", {"a": b"1", "b": b"3"})
    assert changed.label == "v1"


def test_a_manifest_equal_to_an_older_version_is_a_new_version(reg: mt.Registry) -> None:
    reg.log_version("m", {"a": b"1"})
    reg.log_version("m", {"a": b"2"})
    assert reg.log_version("m", {"a": b"1"}).label == "v2"


def test_files_from_a_directory_keep_their_relative_paths(reg: mt.Registry, tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    (root / "sub").mkdir(parents=True)
    (root / "model.bin").write_bytes(b"weights")
    (root / "sub" / "config.json").write_text("{}")
    version = reg.log_version("m", root)
    assert [f.path for f in version.files] == ["model.bin", "sub/config.json"]
    assert version.size == len(b"weights") + 2


def test_a_second_model_with_the_same_name_is_refused(reg: mt.Registry) -> None:
    reg.create_model("m")
    with pytest.raises(AlreadyExists, match="team/m"):
        reg.create_model("m")


def test_models_and_registered_models_share_one_name_space(reg: mt.Registry) -> None:
    reg.log_version("m", {"w": b"1"})
    reg.link("m:v0", "prod-models")
    with pytest.raises(AlreadyExists, match="registered"):
        reg.create_model("prod-models")
    with pytest.raises(AlreadyExists, match="model"):
        reg.link("m:v0", "m")


def test_the_architecture_hash_is_bound_on_first_use(reg: mt.Registry) -> None:
    reg.log_version("m", {"w": b"1"})
    assert reg.model("m").arch_hash is None
    reg.log_version("m", {"w": b"2"}, arch_hash="arch-A")
    assert reg.model("m").arch_hash == "arch-A"
    reg.log_version("m", {"w": b"3"}, arch_hash="arch-A")
    with pytest.raises(ArchitectureMismatch, match="arch-B"):
        reg.log_version("m", {"w": b"4"}, arch_hash="arch-B")
    assert len(reg.versions("m")) == 3


def test_create_model_with_an_architecture(reg: mt.Registry) -> None:
    model = reg.create_model("m", arch_hash="h1", description="d", tags={"team": "cv"})
    assert (model.arch_hash, model.description, model.tags) == ("h1", "d", {"team": "cv"})
    with pytest.raises(ArchitectureMismatch):
        reg.run("m", "r", arch_hash="h2")


def test_an_alias_points_at_one_version_and_moving_it_records_from_and_to(reg: mt.Registry) -> None:
    for i in range(3):
        reg.log_version("m", {"w": bytes([i])})
    reg.set_alias("m:v0", "production")
    reg.set_alias("m:v2", "production")
    assert reg.model("m").aliases["production"] == "v2"
    assert reg.get("m:v0").aliases == ()
    assert reg.get("m:production").label == "v2"
    moves = reg.alias_history("m", "production")
    assert [(m.from_label, m.to_label, m.actor) for m in moves] == [
        (None, "v0", "alice"),
        ("v0", "v2", "alice"),
    ]
    assert moves[0].at < moves[1].at


def test_setting_an_alias_where_it_already_is_records_nothing(reg: mt.Registry) -> None:
    reg.log_version("m", {"w": b"1"}, aliases=["prod"])
    before = reg.head()
    reg.set_alias("m:v0", "prod")
    assert reg.head() == before


def test_latest_and_version_labels_are_reserved(reg: mt.Registry) -> None:
    reg.log_version("m", {"w": b"1"})
    for alias in ("latest", "v3"):
        with pytest.raises(InvalidName, match="reserved"):
            reg.set_alias("m:v0", alias)


def test_compare_and_set_refuses_a_stale_expectation(reg: mt.Registry) -> None:
    for i in range(3):
        reg.log_version("m", {"w": bytes([i])})
    reg.set_alias("m:v0", "prod")
    reg.set_alias("m:v1", "prod", expected="v0")
    with pytest.raises(ConcurrencyConflict, match="v1"):
        reg.set_alias("m:v2", "prod", expected="v0")
    assert reg.get("m:prod").label == "v1"


def test_removing_an_alias_is_recorded_in_its_history(reg: mt.Registry) -> None:
    reg.log_version("m", {"w": b"1"}, aliases=["prod"])
    reg.remove_alias("m", "prod")
    with pytest.raises(NotFound, match="no alias 'prod'"):
        reg.get("m:prod")
    assert [(m.from_label, m.to_label) for m in reg.alias_history("m", "prod")] == [
        (None, "v0"),
        ("v0", None),
    ]
    with pytest.raises(NotFound):
        reg.remove_alias("m", "prod")


def test_a_version_belongs_to_one_model_and_many_registered_models(reg: mt.Registry) -> None:
    reg.log_version("m", {"w": b"1"})
    reg.link("m:v0", "detectors", aliases=["staging"])
    reg.link("m:v0", "all-models")
    assert reg.lineage("m:v0").registered == ["team/all-models", "team/detectors"]
    assert reg.get("detectors:staging").ref == "team/m:v0"
    assert [link.ref for link in reg.registered("detectors").links()] == ["team/m:v0"]


def test_registered_models_number_their_links_and_resolve_latest(reg: mt.Registry) -> None:
    for i in range(3):
        reg.log_version("m", {"w": bytes([i])})
    reg.link("m:v2", "r")
    reg.link("m:v0", "r")
    assert [(lk.label, lk.ref) for lk in reg.links("r")] == [
        ("v0", "team/m:v2"),
        ("v1", "team/m:v0"),
    ]
    assert reg.get("r").ref == "team/m:v0"
    assert reg.get("r:v0").ref == "team/m:v2"


def test_registered_aliases_move_only_between_linked_versions(reg: mt.Registry) -> None:
    reg.log_version("m", {"w": b"1"})
    reg.log_version("m", {"w": b"2"})
    reg.link("m:v0", "r", aliases=["production"])
    with pytest.raises(NotFound, match="no linked version v1"):
        reg.set_alias("r:v1", "production")
    reg.link("m:v1", "r")
    reg.set_alias("r:v1", "production", expected="v0")
    assert reg.registered("r").aliases == {"production": "team/m:v1"}
    history = reg.alias_history("r", "production")
    assert [(m.from_ref, m.to_ref) for m in history] == [
        (None, "team/m:v0"),
        ("team/m:v0", "team/m:v1"),
    ]


def test_unlinking_removes_the_registered_aliases_on_that_version(reg: mt.Registry) -> None:
    reg.log_version("m", {"w": b"1"})
    reg.link("m:v0", "r", aliases=["production"])
    reg.unlink("m:v0", "r")
    assert reg.registered("r").aliases == {}
    assert reg.links("r") == []
    assert [m.to_ref for m in reg.alias_history("r", "production")] == ["team/m:v0", None]
    with pytest.raises(NotFound, match="not linked"):
        reg.unlink("m:v0", "r")


def test_a_run_name_is_resumed_and_a_changed_config_refused(reg: mt.Registry) -> None:
    run = reg.run("m", "lr-0.01", config={"lr": 0.01})
    assert not run.resumed
    run.log_metrics({"loss": 1.0}, step=0)
    again = reg.run("m", "lr-0.01", config={"lr": 0.01})
    assert again.resumed
    again.log_metrics({"loss": 0.5}, step=1)
    assert [(k, s, v) for k, s, v, _ in reg.metrics("m", "lr-0.01")] == [
        ("loss", 0, 1.0),
        ("loss", 1, 0.5),
    ]
    with pytest.raises(RunConfigConflict, match="lr"):
        reg.run("m", "lr-0.01", config={"lr": 0.1})
    forced = reg.run("m", "lr-0.01", config={"lr": 0.1}, allow_config_change=True)
    assert forced.resumed
    assert reg.run_info("m", "lr-0.01").resumes == 2


def test_run_context_finishes_or_fails_the_run(reg: mt.Registry) -> None:
    with reg.run("m", "ok"):
        pass
    with pytest.raises(RuntimeError), reg.run("m", "bad"):
        raise RuntimeError("diverged")
    assert {r.name: r.status for r in reg.runs("m")} == {"ok": "finished", "bad": "failed"}


def test_lineage_links_runs_inputs_and_derivations(reg: mt.Registry) -> None:
    base = reg.log_version("pretrained", {"w": b"base"})
    run = reg.run("finetuned", "ft-1", config={"lr": 1e-4})
    run.use(base.ref)
    tuned = run.log_version({"w": b"tuned"}, epoch=3, derived_from=[base.ref])
    lineage = reg.lineage(tuned.ref)
    assert lineage.run is not None and lineage.run.name == "ft-1"
    assert lineage.inputs == [base.ref]
    assert lineage.derived_from == [base.ref]
    assert reg.lineage(base.ref).derivatives == [tuned.ref]
    assert reg.lineage(base.ref).consumers == ["team/finetuned/ft-1"]
    assert tuned.epoch == 3 and tuned.run == "ft-1"


def test_a_version_from_an_unknown_run_is_refused(reg: mt.Registry) -> None:
    with pytest.raises(NotFound, match="run 'ghost'"):
        reg.log_version("m", {"w": b"1"}, run="ghost")


def test_the_model_quota_is_enforced(reg: mt.Registry) -> None:
    reg.set_quota("team", 2)
    reg.create_model("a")
    reg.create_model("b")
    with pytest.raises(QuotaExceeded, match="quota is 2"):
        reg.create_model("c")
    with pytest.raises(QuotaExceeded):
        reg.log_version("c", {"w": b"1"})
    reg.set_quota("team", None)
    reg.create_model("c")


def test_namespaces_are_created_on_first_use_and_personal_ones_are_private(
    home: Path, clock: ManualClock
) -> None:
    alice = mt.open(home, actor="alice", clock=clock)
    bob = mt.open(home, actor="bob", clock=clock)
    alice.log_version("m", {"w": b"1"})
    assert alice.get("alice/m").ref == "alice/m:v0"
    assert bob.get("alice/m").ref == "alice/m:v0"  # reading is open to all
    with pytest.raises(PermissionDenied, match=r"'bob'.*personal"):
        bob.set_alias("alice/m:v0", "prod")
    bob.download("alice/m:v0", home / "bob-copy")  # downloads are recorded for anyone
    shared = mt.open(home, actor="bob", namespace="shared", clock=clock)
    shared.log_version("m", {"w": b"1"})
    alice.set_alias("shared/m:v0", "prod")


def test_every_change_is_an_audit_event_with_its_actor(home: Path, clock: ManualClock) -> None:
    alice = mt.open(home, actor="alice", namespace="team", clock=clock)
    bot = mt.open(home, actor="ci-bot", namespace="team", clock=clock)
    alice.log_version("m", {"w": b"1"})
    bot.set_alias("m:v0", "production")
    bot.download("m:v0", home / "out")
    trail = [(e.actor, e.type) for e in alice.audit(namespace="team")]
    assert trail == [
        ("alice", "NamespaceCreated"),
        ("alice", "ModelCreated"),
        ("alice", "VersionLogged"),
        ("ci-bot", "AliasMoved"),
        ("ci-bot", "VersionDownloaded"),
    ]
    assert [e.type for e in alice.audit(actor="ci-bot", types=["AliasMoved"])] == ["AliasMoved"]


def test_audit_filters_by_time(reg: mt.Registry, clock: ManualClock) -> None:
    from modeltrail.core.events.envelope import to_datetime

    reg.log_version("m", {"w": b"1"})
    clock.advance(3600)
    middle = to_datetime(clock.now - 1_800_000_000)
    reg.set_alias("m:v0", "prod")
    assert [e.type for e in reg.audit(since=middle)] == ["AliasMoved"]
    assert "AliasMoved" not in [e.type for e in reg.audit(until=middle)]


def test_download_verifies_and_writes_every_file(reg: mt.Registry, tmp_path: Path) -> None:
    reg.log_version("m", {"a.bin": b"alpha", "dir/b.bin": b"beta"})
    out = reg.download("m:v0", tmp_path / "out")
    assert (out / "a.bin").read_bytes() == b"alpha"
    assert (out / "dir" / "b.bin").read_bytes() == b"beta"
    assert [e.type for e in reg.events(types=["VersionDownloaded"])] == ["VersionDownloaded"]


def test_download_of_a_corrupted_blob_fails_and_writes_nothing(
    reg: mt.Registry, tmp_path: Path
) -> None:
    version = reg.log_version("m", {"a.bin": b"alpha"})
    reg.blobs.path_of(version.files[0].sha256).write_bytes(b"alphA")
    with pytest.raises(IntegrityError, match="corrupt"):
        reg.download("m:v0", tmp_path / "out")
    assert not (tmp_path / "out" / "a.bin").exists()
    assert list(reg.events(types=["VersionDownloaded"])) == []


def test_identical_content_is_stored_once(reg: mt.Registry) -> None:
    reg.log_version("m", {"a": b"same", "b": b"same"})
    reg.log_version("n", {"c": b"same"})
    blobs = [p for p in (reg.blobs.root / "sha256").rglob("*") if p.is_file()]
    assert len(blobs) == 1


def test_path_traversal_in_file_names_is_refused(reg: mt.Registry) -> None:
    for name in ("../escape", "/abs", "a/../../b", "nul\x00"):
        with pytest.raises(InvalidName, match="file name"):
            reg.log_version("m", {name: b"x"})
    assert reg.head() == 0


def test_diff_lists_file_and_metadata_changes(reg: mt.Registry) -> None:
    reg.log_version("m", {"a": b"1", "b": b"2"}, metadata={"acc": 0.5, "lr": 0.1})
    reg.log_version("m", {"a": b"1", "b": b"3", "c": b"4"}, metadata={"acc": 0.7, "lr": 0.1})
    d = reg.diff("m:v0", "m:v1")
    assert (d.added, d.removed, d.changed) == (["c"], [], ["b"])
    assert d.metadata == {"acc": (0.5, 0.7)}
    assert reg.diff("m:v1", "m:v1").same


def test_tags_on_models_versions_and_registered_models(reg: mt.Registry) -> None:
    reg.log_version("m", {"w": b"1"})
    reg.link("m:v0", "r")
    reg.set_tags("m", {"team": "cv", "old": "x"})
    reg.set_tags("m", {}, remove=["old"])
    reg.set_tags("m:v0", {"reviewed": "yes"})
    reg.set_tags("r", {"tier": "gold"})
    assert reg.model("m").tags == {"team": "cv"}
    assert reg.get("m:v0").tags == {"reviewed": "yes"}
    assert reg.registered("r").tags == {"tier": "gold"}


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda r: r.get("nothing"), NotFound),
        (lambda r: r.get("m:v9"), NotFound),
        (lambda r: r.get("m:missing-alias"), NotFound),
        (lambda r: r.model("bad name"), InvalidName),
        (lambda r: r.log_version("m", {}), InvalidInput),
        (lambda r: r.log_version("m", 42), InvalidInput),
        (lambda r: r.registered("nope"), NotFound),
        (lambda r: r.set_alias("m:v0", "bad alias"), InvalidName),
        (lambda r: r.set_quota("team", -1), InvalidInput),
    ],
)
def test_bad_input_is_a_typed_error_and_changes_nothing(reg: mt.Registry, call, error) -> None:  # type: ignore[no-untyped-def]
    reg.log_version("m", {"w": b"1"})
    before = reg.export()
    with pytest.raises(error):
        call(reg)
    assert reg.export() == before


def test_as_of_is_read_only_and_shows_the_past(reg: mt.Registry) -> None:
    reg.log_version("m", {"w": b"1"}, aliases=["prod"])
    position = reg.head()
    reg.log_version("m", {"w": b"2"}, aliases=["prod"])
    past = reg.as_of(position)
    assert past.get("m:prod").label == "v0"
    assert past.model("m").version_count == 1
    assert len(list(past.events())) == position
    with pytest.raises(ReadOnly):
        past.set_alias("m:v0", "x")


def test_as_of_a_time_uses_append_time(reg: mt.Registry, clock: ManualClock) -> None:
    from modeltrail.core.events.envelope import to_datetime

    reg.log_version("m", {"w": b"1"}, aliases=["prod"])
    clock.advance(60)
    moment = to_datetime(clock.now)
    clock.advance(60)
    reg.log_version("m", {"w": b"2"}, aliases=["prod"])
    assert reg.as_of(moment).get("m:prod").label == "v0"
    assert reg.get("m:prod").label == "v1"


def test_verify_reports_a_tampered_event(reg: mt.Registry, home: Path) -> None:
    import sqlite3

    reg.log_version("m", {"w": b"1"})
    reg.set_alias("m:v0", "prod")
    assert reg.verify().ok
    with sqlite3.connect(home / "trail.db") as raw:
        raw.execute("UPDATE events SET actor = 'mallory' WHERE position = 3")
    report = reg.verify()
    assert not report.ok
    assert "position 3" in report.problems[0] and "altered" in report.problems[0]


def test_verify_reports_projection_drift(reg: mt.Registry, home: Path) -> None:
    import sqlite3

    reg.log_version("m", {"w": b"1"}, aliases=["prod"])
    with sqlite3.connect(home / "trail.db") as raw:
        raw.execute("DELETE FROM aliases")
    report = reg.verify()
    assert any("aliases" in p for p in report.problems)
    reg.rebuild()
    assert reg.verify().ok
    assert reg.get("m:prod").label == "v0"


def test_metric_names_may_hold_slashes_like_in_wandb_and_mlflow(reg: mt.Registry) -> None:
    run = reg.run("m", "r")
    run.log_metrics({"train/loss": 0.5, "val/top 1": 0.9}, step=1)
    assert sorted(k for k, *_ in reg.metrics("m", "r")) == ["train/loss", "val/top 1"]
    with pytest.raises(InvalidName, match="metric name"):
        run.log_metrics({"/leading": 1.0})


def _tamper(home: Path, *statements: str) -> None:
    import sqlite3

    with sqlite3.connect(home / "trail.db") as raw:
        for statement in statements:
            raw.execute(statement)


def test_verify_finds_a_removed_event(reg: mt.Registry, home: Path) -> None:
    reg.log_version("m", {"w": b"1"})
    reg.set_alias("m:v0", "prod")
    reg.set_alias("m:v0", "staging")
    _tamper(home, "DELETE FROM events WHERE position = 4")  # the move of prod
    report = reg.verify()
    assert not report.ok
    assert report.problems[0].startswith(
        "model:team/m v3 (position 5): AliasMoved claims version 3 of stream 'model:team/m', "
        "whose last version is 1"
    )


def test_verify_finds_reordered_events(reg: mt.Registry, home: Path) -> None:
    reg.log_version("m", {"w": b"1"})
    reg.set_alias("m:v0", "prod")
    reg.set_alias("m:v0", "staging")
    _tamper(  # swap the two alias moves, keeping each one's own stream version
        home,
        "UPDATE events SET position = -4 WHERE position = 4",
        "UPDATE events SET position = 4 WHERE position = 5",
        "UPDATE events SET position = 5 WHERE position = -4",
    )
    report = reg.verify()
    assert not report.ok
    assert "model:team/m" in report.problems[0]
