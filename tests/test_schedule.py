"""Scheduled jobs: retention, promotion policies, snapshots, and their APScheduler wiring."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import modeltrail as mt
from modeltrail.cli import main
from modeltrail.consumers import jobs
from modeltrail.consumers.schedule import build_scheduler, load_config, parse_config, run_once
from modeltrail.core.projections.snapshots import SqlSnapshots
from modeltrail.core.projections.state import MemoryState
from modeltrail.core.projections.tables import MODELS, ModelRow
from modeltrail.errors import InvalidInput, NotFound
from tests.conftest import ManualClock

DAY = 86_400.0


def _blob_exists(reg: mt.Registry, content: bytes) -> bool:
    import hashlib

    return reg.blobs.has(hashlib.sha256(content).hexdigest())


# -- retention ------------------------------------------------------------------------------


def test_retention_purges_old_versions_that_hold_no_alias(
    reg: mt.Registry, clock: ManualClock, tmp_path: Path
) -> None:
    reg.log_version("m", {"shared": b"S", "only0": b"zero"})  # v0: old, no alias
    reg.log_version("m", {"w": b"one"}, aliases=["production"])  # v1: old, has an alias
    reg.log_version("m", {"w": b"two"})  # v2: old, linked with a registered alias
    reg.link("m:v2", "classifier", aliases=["staging"])
    reg.log_version("m", {"w": b"three"})  # v3: old, only linked
    reg.link("m:v3", "classifier")
    clock.advance(31 * DAY)
    reg.log_version("m", {"shared": b"S", "w": b"four"})  # v4: new (and latest)
    reg.log_version("other", {"w": b"other"})  # other:v0: old? no: new, and latest

    result = jobs.retention(reg, days=30, blob_grace_s=0)
    assert result.purged == ["team/m:v0", "team/m:v3"]
    assert result.blobs_deleted == 2  # "zero" and "three"; "S" is still used by v4
    assert not _blob_exists(reg, b"zero")
    assert not _blob_exists(reg, b"three")
    assert _blob_exists(reg, b"S")

    purged = reg.audit(types=["BlobsPurged"])
    assert [(e.data["model"], e.data["index"]) for e in purged] == [("m", 0), ("m", 3)]
    assert reg.get("m:v0").purged
    assert [f.path for f in reg.get("m:v0").files] == ["only0", "shared"]  # metadata stays
    with pytest.raises(NotFound, match="purged"):
        reg.download("m:v0", tmp_path / "v0")
    reg.download("m:v4", tmp_path / "v4")  # the shared blob is intact

    again = jobs.retention(reg, days=30, blob_grace_s=0)
    assert again.purged == []
    assert again.blobs_deleted == 0


def test_retention_keeps_versions_younger_than_the_limit(
    reg: mt.Registry, clock: ManualClock
) -> None:
    reg.log_version("m", {"w": b"0"})
    reg.log_version("m", {"w": b"1"})
    clock.advance(29 * DAY)
    assert jobs.retention(reg, days=30).purged == []
    clock.advance(2 * DAY)
    assert jobs.retention(reg, days=30).purged == ["team/m:v0"]


def test_retention_skips_personal_namespaces_of_others(home: Path, clock: ManualClock) -> None:
    with mt.open(home, actor="alice", clock=clock) as alice:
        alice.log_version("m", {"w": b"0"})
        alice.log_version("m", {"w": b"1"})
    clock.advance(40 * DAY)
    with mt.open(home, actor="janitor", namespace="team", clock=clock) as janitor:
        result = jobs.retention(janitor, days=30)
        assert (result.purged, result.skipped) == ([], ["alice/m:v0"])


# -- promotion policy ------------------------------------------------------------------------


def test_promotion_moves_the_alias_to_the_newest_version_passing(reg: mt.Registry) -> None:
    reg.log_version("m", {"w": b"0"}, metadata={"val_acc": 0.80})
    reg.log_version("m", {"w": b"1"}, metadata={"val_acc": 0.93})
    reg.log_version("m", {"w": b"2"}, metadata={"val_acc": 0.91})
    reg.log_version("m", {"w": b"3"}, metadata={"val_acc": 0.70})
    moved = jobs.promote(reg, model="m", alias="production", metric="val_acc", threshold=0.9)
    assert moved == "team/m:v2"
    assert jobs.promote(reg, model="m", alias="production", metric="val_acc", threshold=0.9) is None
    reg.log_version("m", {"w": b"4"}, metadata={"val_acc": 0.95})
    assert jobs.promote(reg, model="m", alias="production", metric="val_acc", threshold=0.9) == (
        "team/m:v4"
    )
    assert [m.to_label for m in reg.alias_history("m", "production")] == ["v2", "v4"]


def test_promotion_reads_the_runs_metrics_and_other_comparisons(reg: mt.Registry) -> None:
    with reg.run("m", "r1") as run:
        run.log_metrics({"loss": 0.9}, step=1)
        run.log_metrics({"loss": 0.2}, step=2)
        run.log_version({"w": b"0"})
    policy = {"model": "m", "alias": "candidate", "metric": "loss", "threshold": 0.3, "op": "<="}
    assert jobs.promote(reg, **policy, source="metadata") is None  # type: ignore[arg-type]
    assert jobs.promote(reg, **policy, source="run") == "team/m:v0"  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="op '=='"):
        jobs.promote(reg, model="m", alias="a", metric="loss", threshold=1, op="==")


def test_a_promotion_refused_by_the_stages_is_audited_not_raised(reg: mt.Registry) -> None:
    reg.log_version("m", {"w": b"0"}, metadata={"val_acc": 0.99})
    reg.set_promotion_rules("m", stages=["staging", "production"])
    assert jobs.promote(reg, model="m", alias="production", metric="val_acc", threshold=0.9) is None
    [refused] = reg.audit(types=["AliasMoveRefused"])
    assert refused.data["rule"] == "stages"
    reg.set_alias("m:v0", "staging")
    assert jobs.promote(reg, model="m", alias="production", metric="val_acc", threshold=0.9) == (
        "team/m:v0"
    )


# -- snapshots -------------------------------------------------------------------------------


def _busy_log(reg: mt.Registry, start: int, n: int) -> None:
    for i in range(start, start + n):
        reg.log_version("m", {"w": f"{i}".encode()}, metadata={"i": i})
        reg.set_alias(f"m:v{i}", "staging")
    reg.link(f"m:v{start}", "classifier", aliases=["production"])


def _store(reg: mt.Registry) -> SqlSnapshots:
    store = reg._require_engine().runner.snapshots
    assert isinstance(store, SqlSnapshots)
    return store


def test_a_rebuild_from_a_snapshot_equals_a_rebuild_from_zero(reg: mt.Registry) -> None:
    _busy_log(reg, 0, 5)
    at = jobs.snapshot(reg)
    assert _store(reg).positions() == [at]
    _busy_log(reg, 5, 5)
    runner = reg._require_engine().runner

    reg.rebuild()
    from_snapshot = reg.export()
    store, runner.snapshots = runner.snapshots, None
    try:
        reg.rebuild()
        from_zero = reg.export()
    finally:
        runner.snapshots = store
    assert from_snapshot == from_zero
    assert reg.verify().ok


def test_as_of_from_a_snapshot_equals_as_of_from_zero(reg: mt.Registry) -> None:
    _busy_log(reg, 0, 4)
    middle = reg.head()
    _busy_log(reg, 4, 4)
    jobs.snapshot(reg)
    early = jobs.snapshot(reg)  # the same position again: replaced, not duplicated
    assert _store(reg).positions() == [early]
    _busy_log(reg, 8, 2)
    runner = reg._require_engine().runner
    for position in (middle, early, reg.head()):
        with_snapshots = reg.as_of(position).export()
        store, runner.snapshots = runner.snapshots, None
        try:
            without = reg.as_of(position).export()
        finally:
            runner.snapshots = store
        assert with_snapshots == without


def test_the_nearest_snapshot_is_used_and_a_stale_one_is_not(reg: mt.Registry) -> None:
    _busy_log(reg, 0, 3)
    first = jobs.snapshot(reg)
    _busy_log(reg, 3, 3)
    second = jobs.snapshot(reg)
    store = _store(reg)
    assert [p for _, p in filter(None, [store.nearest(first), store.nearest(second)])] == [
        first,
        second,
    ]
    assert store.nearest(first - 1) is None

    # A planted row proves the replay starts from the snapshot (and verify, which always
    # folds from zero, catches such a snapshot).
    planted = store.nearest(second)
    assert planted is not None
    state, _ = planted
    state.put(MODELS, ModelRow("team", "planted", None, None, "{}", 0, 0, "x", 0))
    store.save(state, second)
    reg.rebuild()
    assert "team/planted" in [m.ref for m in reg.models()]
    assert not reg.verify().ok

    engine = reg._require_engine()
    with engine.database.transaction() as tx:
        tx.run("UPDATE projection_snapshots SET fingerprint = 'other-folds'")
    assert store.nearest(None) is None
    reg.rebuild()
    assert "team/planted" not in [m.ref for m in reg.models()]
    assert reg.verify().ok


def test_snapshots_keep_only_the_newest(reg: mt.Registry) -> None:
    positions = []
    for i in range(4):
        _busy_log(reg, i * 2, 2)
        positions.append(jobs.snapshot(reg, keep=2))
    assert _store(reg).positions() == positions[-2:]
    empty = MemoryState()
    with pytest.raises(mt.errors.IntegrityError, match="no event at position"):
        _store(reg).save(empty, reg.head() + 10)


# -- the scheduler ---------------------------------------------------------------------------

CONFIG = """
[[job]]
name = "retention"
kind = "retention"
every = "1d"
days = 30

[[job]]
kind = "promotion"
cron = "*/5 * * * *"
model = "m"
alias = "production"
metric = "val_acc"
threshold = 0.9

[[job]]
kind = "snapshot"
every = 3600
keep = 3
"""


def test_the_config_becomes_scheduled_jobs_with_their_triggers(
    reg: mt.Registry, tmp_path: Path
) -> None:
    path = tmp_path / "schedule.toml"
    path.write_text(CONFIG)
    specs = load_config(path)
    assert [(s.name, s.kind, s.every_s, s.cron) for s in specs] == [
        ("retention", "retention", 86400.0, None),
        ("promotion-2", "promotion", None, "*/5 * * * *"),
        ("snapshot-3", "snapshot", 3600.0, None),
    ]
    scheduler = build_scheduler(reg, specs)
    found = {job.id: job for job in scheduler.get_jobs()}
    assert set(found) == {"retention", "promotion-2", "snapshot-3"}
    assert type(found["retention"].trigger).__name__ == "IntervalTrigger"
    assert found["retention"].trigger.interval.total_seconds() == 86400
    assert type(found["promotion-2"].trigger).__name__ == "CronTrigger"


def test_the_scheduler_runs_the_jobs_against_the_registry_clock(
    reg: mt.Registry, clock: ManualClock
) -> None:
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent

    reg.log_version("m", {"w": b"0"}, metadata={"val_acc": 0.5})
    reg.log_version("m", {"w": b"1"}, metadata={"val_acc": 0.95})
    reg.log_version("m", {"w": b"2"}, metadata={"val_acc": 0.1})
    clock.advance(45 * DAY)
    lines: list[str] = []
    scheduler = build_scheduler(reg, parse_config(_toml(CONFIG)), log=lines.append)
    done: queue.Queue[JobExecutionEvent] = queue.Queue()
    scheduler.add_listener(done.put, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    scheduler.start()
    try:
        for job in scheduler.get_jobs():
            job.modify(next_run_time=datetime.now(UTC))
        scheduler.wakeup()
        outcomes = {}
        for _ in range(3):
            event = done.get(timeout=30)
            outcomes[event.job_id] = (event.exception, event.retval)
    finally:
        scheduler.shutdown(wait=True)
    assert all(exc is None for exc, _ in outcomes.values()), outcomes
    assert reg.model("m").aliases["production"] == "v1"
    assert reg.get("m:v0").purged  # 45 days old by the registry's clock, no alias
    assert not reg.get("m:v1").purged
    assert outcomes["snapshot-3"][1] > 0
    assert any(line.startswith("job retention: purged") for line in lines)


def _toml(text: str) -> dict[str, object]:
    import tomllib

    return tomllib.loads(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "declares no jobs"),
        ('[[job]]\nkind = "vacuum"\nevery = "1h"', "kind 'vacuum' is invalid"),
        ('[[job]]\nkind = "snapshot"', "exactly one of every"),
        ('[[job]]\nkind = "snapshot"\nevery = "1h"\ncron = "* * * * *"', "exactly one of every"),
        ('[[job]]\nkind = "snapshot"\nevery = "soon"', "every = 'soon' is invalid"),
        ('[[job]]\nkind = "snapshot"\ncron = "61 * * * *"', "cron = '61 * * * *' is invalid"),
        ('[[job]]\nkind = "retention"\nevery = "1d"', "retention needs days"),
        ('[[job]]\nkind = "retention"\nevery = "1d"\ndays = "30"', "wrong type"),
        ('[[job]]\nkind = "snapshot"\nevery = "1d"\ndays = 3', "option 'days' is unknown"),
        (
            '[[job]]\nname = "a"\nkind = "snapshot"\nevery = 1\n'
            '[[job]]\nname = "a"\nkind = "catch_up"\nevery = 1',
            "repeat",
        ),
    ],
)
def test_bad_configs_are_refused_naming_the_rule(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_config(_toml(text))


def test_schedule_run_once_from_the_command_line(
    reg: mt.Registry, home: Path, clock: ManualClock, tmp_path: Path
) -> None:
    reg.log_version("m", {"w": b"0"}, metadata={"val_acc": 0.95})
    path = tmp_path / "schedule.toml"
    path.write_text(CONFIG)
    result = CliRunner().invoke(
        main,
        [
            *("--home", str(home), "--actor", "alice", "-n", "team", "schedule", "run"),
            *("--config", str(path), "--once"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "retention: purged 0 versions" in result.output
    assert "promotion-2: team/m:v0" in result.output
    assert run_once(reg, parse_config(_toml(CONFIG)))[1] == ("promotion-2", None)


def test_schedule_run_stops_cleanly_on_sigterm(home: Path, tmp_path: Path) -> None:
    with mt.open(home, actor="alice", namespace="team") as reg:
        reg.log_version("m", {"w": b"0"})
    path = tmp_path / "schedule.toml"
    path.write_text('[[job]]\nkind = "snapshot"\nevery = "1h"\n')
    env = {**os.environ, "MODELTRAIL_HOME": str(home), "MODELTRAIL_ACTOR": "alice"}
    process = subprocess.Popen(
        [sys.executable, "-m", "modeltrail.cli", "schedule", "run", "--config", str(path)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        assert process.stderr is not None
        line = process.stderr.readline()
        while "next run" not in line and time.monotonic() < deadline:
            line = process.stderr.readline()
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert "scheduler stopped" in rest


def test_retention_keeps_a_blob_that_an_upload_just_reused(
    reg: mt.Registry, clock: ManualClock
) -> None:
    """An upload reuses a stored blob before its version commits: retention running in
    between finds the blob unreferenced but must leave it for the coming version."""
    import os
    import time

    reg.log_version("m", {"w": b"weights"})
    reg.log_version("m", {"w": b"newer"})
    clock.advance(31 * DAY)
    reg.log_version("m", {"w": b"newest"})
    two_hours_ago = time.time() - 7200
    for blob in (reg.blobs.root / "sha256").rglob("*"):
        if blob.is_file():
            os.utime(blob, (two_hours_ago, two_hours_ago))
    reg.blobs.put_bytes(b"weights")  # an upload of the same content, its commit pending
    result = jobs.retention(reg, days=30)
    assert result.purged == ["team/m:v0", "team/m:v1"]
    assert _blob_exists(reg, b"weights")  # reused a moment ago: inside the grace period
    assert not _blob_exists(reg, b"newer")  # unused for two hours: gone
    assert result.blobs_deleted == 1


def test_promotion_reads_a_runs_metrics_once_for_all_its_versions(
    reg: mt.Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    with reg.run("m", "r1") as run:
        for epoch in range(3):
            run.log_metrics({"loss": 0.9 - epoch / 10}, step=epoch)
            run.log_version({"w": bytes([epoch])})
    read: list[str] = []
    metrics = reg.metrics

    def counted(model_ref: str, run_name: str) -> Any:
        read.append(run_name)
        return metrics(model_ref, run_name)

    monkeypatch.setattr(reg, "metrics", counted)
    policy = {"model": "m", "alias": "candidate", "metric": "loss", "threshold": 0.5, "op": "<="}
    assert jobs.promote(reg, **policy, source="run") is None  # type: ignore[arg-type]
    assert read == ["r1"]  # three versions of one run: its metrics read once
    policy["threshold"] = 0.75  # the run's last loss, 0.7, passes: its newest version moves
    assert jobs.promote(reg, **policy, source="run") == "team/m:v2"  # type: ignore[arg-type]
