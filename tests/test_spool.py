"""Offline safety: a trainer goes on while the log is unreachable, and every write lands
later exactly once, in order."""

from __future__ import annotations

import json
import sqlite3
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import modeltrail as mt
from modeltrail.cli import main
from modeltrail.core import commands as cmd
from modeltrail.core.projections.epochs import evaluate, pack, unpack
from modeltrail.errors import LogUnavailable, ProjectionTimeout
from modeltrail.producers.run import Run
from modeltrail.producers.spool import (
    Entry,
    FlushReport,
    Spool,
    open_run,
    outbox_for,
    spool_of,
)
from tests.conftest import ManualClock
from tests.helpers import Team
from tests.services import require_package


@contextmanager
def log_locked(home: Path) -> Iterator[None]:
    """Another process holds the database's write lock (as a long transaction would).
    Taking it waits for a write in progress (a tracer's recording thread may be in one)."""
    holder = sqlite3.connect(home / "trail.db", isolation_level=None, timeout=60)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("COMMIT")
        holder.close()


@pytest.fixture
def trainer(home: Path, clock: ManualClock) -> Iterator[mt.Registry]:
    registry = mt.open(home, actor="alice", namespace="team", clock=clock, busy_timeout=0.05)
    outbox_for(registry).retry_s = 0.0  # try the log again on every write
    yield registry
    registry.close()


def batch(ids: list[int], n_epoch: int | None = 0, dataset_type: str = "train") -> dict[str, Any]:
    n = len(ids)
    return {
        "dataset_type": dataset_type,
        "n_epoch": n_epoch,
        "n_samples": n,
        "num_classes": 2,
        "input_ids": pack("q", ids),
        "labels": pack("i", [i % 2 for i in ids]),
        "predictions": pack("i", [0] * n),
        "losses": pack("f", [float(i) for i in ids]),
        "confidences": pack("f", [0.5] * n),
    }


def submit_batch(reg: mt.Registry, run: Run, ids: list[int], n_epoch: int | None = 0) -> bool:
    outbox = outbox_for(reg)
    entry = outbox.entry(
        "inference",
        run.namespace,
        {"model": run.model, "run": run.name, "batch": batch(ids, n_epoch)},
        requires=run.opened_by,
    )
    return outbox.submit(entry) is not None


def recorded_ids(reg: mt.Registry, stream: str = "inference:team/m/r") -> list[list[int]]:
    events = list(reg.events(stream=stream))
    assert [e.stream_version for e in events] == list(range(len(events)))
    return [list(unpack("q", e.data["input_ids"])) for e in events]


def test_a_locked_log_mid_training_loses_and_duplicates_nothing(
    trainer: mt.Registry, home: Path
) -> None:
    run = trainer.run("m", "r", config={"lr": 0.1})
    spool = spool_of(trainer.settings)
    sent: list[list[int]] = []
    written = []
    for step in range(12):
        ids = list(range(step * 4, step * 4 + 4))
        if step == 4:
            lock = log_locked(home)
            lock.__enter__()
        if step == 9:
            lock.__exit__(None, None, None)
        written.append(submit_batch(trainer, run, ids, n_epoch=step // 6))
        run.log_metrics({"step_loss": float(step)}, step=step)
        sent.append(ids)
        if 4 <= step < 9:
            assert spool.has_pending()
    assert written == [True] * 4 + [False] * 5 + [True] * 3
    assert not spool.has_pending()
    assert recorded_ids(trainer) == sent
    assert [s for _, s, _, _ in trainer.metrics("m", "r")] == list(range(12))
    query = trainer._read.query
    assert evaluate(query, "team", "m", "r", 0).n_samples == 24
    assert evaluate(query, "team", "m", "r", "latest").n_epoch == 1
    assert trainer.verify().ok


def test_spooled_events_keep_the_time_they_were_made(
    trainer: mt.Registry, home: Path, clock: ManualClock
) -> None:
    run = trainer.run("m", "r")
    with log_locked(home):
        made_at = clock.now
        submit_batch(trainer, run, [1, 2])
        clock.advance(3600)
    spool_of(trainer.settings).flush(trainer)
    (event,) = trainer.events(types=["InferenceBatchRecorded"])
    assert made_at < event.recorded_at < made_at + 1_000_000
    assert event.appended_at >= made_at + 3_600_000_000  # landed an hour later


def test_the_tracer_trains_on_while_the_log_is_locked(trainer: mt.Registry, home: Path) -> None:
    torch = require_package("torch")
    from modeltrail.producers.torch import ClassificationTracer, Evaluator

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sent = []
    with ClassificationTracer(model, "m", "r", trainer, config={"lr": 0.1}) as tracer:
        lock = log_locked(home)
        for step in range(10):
            if step == 3:
                lock.__enter__()
            if step == 7:
                lock.__exit__(None, None, None)
            x, y = torch.randn(5, 8), torch.randint(0, 3, (5,))
            ids = list(range(step * 5, step * 5 + 5))
            logits = tracer(x, y, input_ids=ids, n_epoch=step // 5)
            torch.nn.functional.cross_entropy(logits, y).backward()
            optimizer.step()
            optimizer.zero_grad()
            sent.append(ids)
    assert recorded_ids(trainer) == sent
    assert Evaluator("m", "r", trainer).request_evaluation("latest").n_samples == 25
    assert not spool_of(trainer.settings).has_pending()


def test_a_run_opened_while_the_log_is_locked(trainer: mt.Registry, home: Path) -> None:
    with log_locked(home):
        run = open_run(trainer, "m", "r", config={"lr": 0.1}, arch_hash="abc")
        assert run.resumed is None and run.opened_by is not None
        assert submit_batch(trainer, run, [1, 2, 3]) is False
        run.log_metrics({"loss": 1.0}, step=0)
        run.finish()
    report = spool_of(trainer.settings).flush(trainer)
    assert (report.flushed, report.rejected) == (4, 0)
    info = trainer.run_info("m", "r")
    assert (info.status, trainer.model("m").arch_hash) == ("finished", "abc")
    assert recorded_ids(trainer) == [[1, 2, 3]]
    assert [e.type for e in trainer.events(stream="run:team/m/r")] == [
        "RunStarted",
        "MetricsLogged",
        "RunFinished",
    ]


def test_writes_made_while_entries_wait_are_spooled_behind_them(
    trainer: mt.Registry, home: Path
) -> None:
    base = trainer.log_version("base", {"w": b"base"})
    outbox = outbox_for(trainer)
    with log_locked(home):
        run = open_run(trainer, "m", "r", config={"lr": 0.1})
    outbox._next_try = float("inf")  # the log is back; the spool is not retried yet
    assert run.use("base:v0") == base
    assert run.log_version({"w": b"1"}, epoch=1, derived_from=["base:v0"]) is None
    assert run.log_metrics({"loss": 1.0}, step=1) is False
    other = open_run(trainer, "m", "other")  # opened after what waits: behind it too
    assert other.resumed is None and other.opened_by is not None
    assert spool_of(trainer.settings).status().pending == 5
    assert spool_of(trainer.settings).flush(trainer) == FlushReport(5, 0)
    assert [e.type for e in trainer.events(stream="run:team/m/r")] == [
        "RunStarted",
        "VersionConsumed",
        "MetricsLogged",
    ]
    version = trainer.get("m:v0")
    assert (version.run, version.epoch) == ("r", 1)
    lineage = trainer.lineage("m:v0")
    assert lineage.inputs == lineage.derived_from == ["team/base:v0"]
    assert [r.name for r in trainer.runs("m")] == ["r", "other"]
    assert run.log_version({"w": b"2"}).label == "v1"  # type: ignore[union-attr]


def test_a_changed_config_is_refused_offline_when_the_registry_can_be_read(
    trainer: mt.Registry, home: Path
) -> None:
    trainer.run("m", "r", config={"lr": 0.1})
    with log_locked(home), pytest.raises(mt.errors.RunConfigConflict, match="new run name"):
        open_run(trainer, "m", "r", config={"lr": 0.5})
    assert not spool_of(trainer.settings).has_pending()


def test_an_opening_refused_at_flush_takes_its_writes_with_it(
    trainer: mt.Registry, home: Path
) -> None:
    trainer.run("m", "r", config={"lr": 0.1})
    spool = spool_of(trainer.settings)
    outbox = outbox_for(trainer)
    opening = outbox.entry(
        "open_run",
        "team",
        {
            "model": "m",
            "run": "r",
            "config": {"lr": 9},
            "allow_config_change": False,
            "arch_hash": None,
        },
    )
    trainer.run("m", "other")
    spool.append(
        [
            opening,
            outbox.entry(
                "inference",
                "team",
                {"model": "m", "run": "r", "batch": batch([1])},
                requires=opening.id,
            ),
            outbox.entry(
                "metrics",
                "team",
                {"model": "m", "run": "r", "metrics": {"loss": 1.0}, "step": None},
                requires=opening.id,
            ),
            outbox.entry("inference", "team", {"model": "m", "run": "other", "batch": batch([7])}),
        ]
    )
    report = spool.flush(trainer)
    assert (report.flushed, report.rejected) == (1, 3)
    assert recorded_ids(trainer) == []
    assert recorded_ids(trainer, "inference:team/m/other") == [[7]]
    rejected = [json.loads(line) for line in spool.rejected_path.read_text().splitlines()]
    assert "RunConfigConflict" in rejected[0]["reason"]
    assert [r["reason"] for r in rejected[1:]] == ["it requires a rejected entry"] * 2
    assert spool.status().rejected == 3 and spool.status().pending == 0


def test_a_flush_whose_outcome_was_lost_is_resent_not_duplicated(
    trainer: mt.Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = trainer.run("m", "r")
    spool = spool_of(trainer.settings)
    for n in range(3):
        spool.append(
            [
                outbox_for(trainer).entry(
                    "inference", "team", {"model": "m", "run": "r", "batch": batch([n])}
                )
            ]
        )
    write_cursor = Spool._write_cursor
    calls = []

    def crash_after_commit(self: Spool, cursor: Any) -> None:
        calls.append(cursor.in_flight is not None)
        if len(calls) == 2:  # the chunk committed; the process dies before noting it
            raise KeyboardInterrupt
        write_cursor(self, cursor)

    monkeypatch.setattr(Spool, "_write_cursor", crash_after_commit)
    with pytest.raises(KeyboardInterrupt):
        spool.flush(trainer)
    monkeypatch.setattr(Spool, "_write_cursor", write_cursor)
    assert recorded_ids(trainer) == [[0], [1], [2]]
    assert spool.status().in_flight == 3
    report = Spool(spool.directory).flush(trainer)  # the next process
    assert report.flushed == 3  # re-sent: the log made it a no-op
    assert recorded_ids(trainer) == [[0], [1], [2]]
    assert spool.status().pending == 0 and spool.status().in_flight == 0
    submit_batch(trainer, run, [3])
    assert recorded_ids(trainer) == [[0], [1], [2], [3]]
    assert trainer.verify().ok


@pytest.mark.parametrize("others_wrote", [False, True])
def test_a_flush_that_did_not_land_is_sent_again_once(
    trainer: mt.Registry, monkeypatch: pytest.MonkeyPatch, others_wrote: bool
) -> None:
    run = trainer.run("m", "r")
    spool = spool_of(trainer.settings)
    spool.append(
        [
            outbox_for(trainer).entry(
                "inference", "team", {"model": "m", "run": "r", "batch": batch([n])}
            )
            for n in range(2)
        ]
    )
    write_cursor = Spool._write_cursor

    def lost_before_commit(self: Spool, cursor: Any) -> None:
        write_cursor(self, cursor)
        if cursor.in_flight is not None:  # saved in flight, then the transaction fails
            raise LogUnavailable("the database went away mid-commit")

    monkeypatch.setattr(Spool, "_write_cursor", lost_before_commit)
    with pytest.raises(LogUnavailable):
        spool.flush(trainer)
    monkeypatch.setattr(Spool, "_write_cursor", write_cursor)
    assert recorded_ids(trainer) == []
    if others_wrote:  # another writer takes the versions the lost chunk had claimed
        trainer._write(lambda b: cmd.record_inference(b, "team", "m", "r", batch([9])))
    spool.flush(trainer)
    assert recorded_ids(trainer) == ([[9]] if others_wrote else []) + [[0], [1]]
    assert trainer.verify().ok
    del run


def test_a_resent_chunk_a_rule_now_refuses_is_sealed_again_and_rejected(
    trainer: mt.Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer.run("m", "r")
    spool = spool_of(trainer.settings)
    outbox = outbox_for(trainer)
    opening = outbox.entry(
        "open_run",
        "team",
        {"model": "m2", "run": "r", "config": {}, "allow_config_change": False, "arch_hash": None},
    )
    metrics = {"model": "m2", "run": "r", "metrics": {"loss": 1.0}, "step": None}
    spool.append([opening, outbox.entry("metrics", "team", metrics, requires=opening.id)])
    write_cursor = Spool._write_cursor

    def lost_before_commit(self: Spool, cursor: Any) -> None:
        write_cursor(self, cursor)
        if cursor.in_flight is not None:
            raise LogUnavailable("the database went away mid-commit")

    monkeypatch.setattr(Spool, "_write_cursor", lost_before_commit)
    with pytest.raises(LogUnavailable):
        spool.flush(trainer)
    monkeypatch.undo()
    assert spool.status().in_flight == 3  # ModelCreated, RunStarted, MetricsLogged
    trainer.set_quota("team", 1)  # meanwhile: no room for model m2 any more
    report = spool.flush(trainer)
    assert (report.flushed, report.rejected) == (0, 2)
    rejected = [json.loads(line) for line in spool.rejected_path.read_text().splitlines()]
    assert rejected[0]["reason"].startswith("QuotaExceeded: model team/m2")
    assert rejected[1]["reason"] == "it requires a rejected entry"
    assert [m.name for m in trainer.models()] == ["m"]
    assert spool.status().in_flight == 0 and trainer.verify().ok


def test_a_chunk_a_slow_projector_has_not_decided_stays_in_flight(
    trainer: mt.Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Kafka a write may return ProjectionTimeout: the chunk is in the log, undecided.
    It is neither rejected nor retried entry by entry; the next flush re-sends it."""
    run = trainer.run("m", "r")
    spool = spool_of(trainer.settings)
    outbox = outbox_for(trainer)

    def spool_batches(ids: list[int]) -> None:
        spool.append(
            [
                outbox.entry("inference", "team", {"model": "m", "run": "r", "batch": batch([n])})
                for n in ids
            ]
        )

    engine = trainer._require_engine()
    write = engine.write
    writes = []

    def slow_projector(decide: Any, *, actor: str) -> Any:
        writes.append(actor)
        write(decide, actor=actor)  # the record is in the log...
        raise ProjectionTimeout("the projection has not applied it yet")  # ...undecided

    spool_batches([0, 1, 2])
    monkeypatch.setattr(engine, "write", slow_projector)
    with pytest.raises(ProjectionTimeout):
        spool.flush(trainer)
    assert len(writes) == 1
    status = spool.status()
    assert (status.pending, status.in_flight, status.rejected) == (3, 3, 0)
    monkeypatch.undo()
    assert spool.flush(trainer).flushed == 3  # re-sent: the log made it a no-op
    assert recorded_ids(trainer) == [[0], [1], [2]]

    spool_batches([3])
    monkeypatch.setattr(engine, "write", slow_projector)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a slow projector needs no person
        outbox._try_flush()
    assert spool.status().in_flight == 1 and spool.status().rejected == 0
    monkeypatch.undo()
    spool.flush(trainer)
    assert recorded_ids(trainer) == [[0], [1], [2], [3]]
    assert not spool.has_pending() and trainer.verify().ok
    del run


def test_event_ids_come_from_the_entry(trainer: mt.Registry) -> None:
    run = trainer.run("m", "r")
    outbox = outbox_for(trainer)
    entry = outbox.entry(
        "metrics", "team", {"model": "m", "run": "r", "metrics": {"a": 1.0}, "step": None}
    )
    assert outbox.submit(entry)
    (event,) = trainer.events(types=["MetricsLogged"])
    assert event.event_id == uuid.uuid5(entry.id, "0")
    del run


def test_a_torn_line_is_set_aside_and_the_rest_flushed(trainer: mt.Registry) -> None:
    run = trainer.run("m", "r")
    spool = spool_of(trainer.settings)
    spool.directory.mkdir(parents=True, exist_ok=True)
    spool.entries_path.write_bytes(b'{"id": "torn by a cr')
    submit_batch(trainer, run, [1])  # appended after the torn line, then flushed
    assert recorded_ids(trainer) == [[1]]
    assert spool.status().rejected == 1
    assert "unreadable" in spool.rejected_path.read_text()


def test_entries_round_trip_through_their_text(clock: ManualClock) -> None:
    entry = Entry(
        "inference",
        "team",
        "alice",
        5,
        {"model": "m", "batch": batch([1, 2])},
        requires=uuid.uuid4(),
    )
    assert Entry.loads(entry.dumps()) == entry


def test_a_checkpoint_logged_while_the_log_is_locked(
    trainer: mt.Registry, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = require_package("torch")
    from modeltrail.producers.torch import load_model, log_model

    model = torch.nn.Linear(4, 2)
    run = trainer.run("m", "r")
    stored: list[int] = []
    put_bytes = trainer.blobs.put_bytes

    def counted(content: bytes) -> tuple[str, int]:
        stored.append(len(content))
        return put_bytes(content)

    monkeypatch.setattr(trainer.blobs, "put_bytes", counted)
    with log_locked(home):
        assert log_model(trainer, model, "m", run=run, epoch=1, aliases=["best"]) is None
    assert len(stored) == 1  # the weights are stored once, then the version spooled
    spool_of(trainer.settings).flush(trainer)
    version = trainer.get("m:best")
    assert (version.label, version.run, version.epoch) == ("v0", "r", 1)
    restored = load_model(trainer, "m:best", torch.nn.Linear(4, 2))
    assert torch.equal(restored.weight, model.weight)


def test_what_a_checkpoint_breaks_is_refused_offline_by_the_command_itself(
    trainer: mt.Registry, home: Path
) -> None:
    torch = require_package("torch")
    from modeltrail.producers.torch import log_model

    log_model(trainer, torch.nn.Linear(4, 2), "m")
    with log_locked(home):
        offline = open_run(trainer, "m", "r")  # not in the projection until flushed
        with pytest.raises(mt.errors.ArchitectureMismatch, match="new model name"):
            log_model(trainer, torch.nn.Linear(4, 3), "m", run=offline)
        with pytest.raises(mt.errors.InvalidName, match="alias"):
            log_model(trainer, torch.nn.Linear(4, 2), "m", run=offline, aliases=["Bad Alias"])
        assert log_model(trainer, torch.nn.Linear(4, 2), "m", run=offline, epoch=1) is None
    assert spool_of(trainer.settings).flush(trainer) == FlushReport(2, 0)
    assert (trainer.get("m:v1").run, trainer.get("m:v1").epoch) == ("r", 1)


def test_spool_status_and_flush_from_the_shell(trainer: mt.Registry, home: Path) -> None:
    run = trainer.run("m", "r")
    with log_locked(home):
        submit_batch(trainer, run, [1])
        submit_batch(trainer, run, [2])
    env = {"MODELTRAIL_HOME": str(home), "MODELTRAIL_ACTOR": "alice"}
    shell = CliRunner()
    status = shell.invoke(main, ["spool", "status", "--json"], env=env)
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["pending"] == 2
    flushed = shell.invoke(main, ["spool", "flush"], env=env)
    assert flushed.exit_code == 0, flushed.output
    assert "flushed 2 entries" in flushed.output
    assert recorded_ids(trainer) == [[1], [2]]
    assert (
        json.loads(shell.invoke(main, ["spool", "status", "--json"], env=env).output)["pending"]
        == 0
    )


def test_a_spool_that_needs_a_person_warns_and_training_goes_on(trainer: mt.Registry) -> None:
    run = trainer.run("m", "r")
    spool = spool_of(trainer.settings)
    spool.append(
        [
            outbox_for(trainer).entry(
                "inference", "team", {"model": "m", "run": "r", "batch": batch([1])}
            )
        ]
    )
    spool.directory.mkdir(parents=True, exist_ok=True)
    forged = {
        "event_id": str(uuid.uuid4()),
        "type": "MetricsLogged",
        "stream": "run:team/m/r",
        "stream_version": 1,
        "namespace": "team",
        "recorded_at": 1,
        "actor": "alice",
        **dict.fromkeys(("prev_hash", "hash", "schema", "payload"), "AAAA"),
    }
    spool.cursor_path.write_text(
        json.dumps({"done": 0, "in_flight": {"end": 1, "events": [forged]}})
    )
    with pytest.warns(RuntimeWarning, match="spool flush"):
        assert submit_batch(trainer, run, [2]) is False
    assert spool.status().pending == 2 and spool.status().in_flight == 1
    assert recorded_ids(trainer) == []


@pytest.mark.services
def test_a_spool_flushes_over_kafka_once_a_slow_projector_catches_up(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    team.start_projector()
    reg = team.open("alice")
    reg.run("m", "r")
    reg.run("m", "other")
    spool = spool_of(reg.settings)
    outbox = outbox_for(reg)

    def inference(run: str, ids: list[int]) -> Entry:
        return outbox.entry("inference", "team", {"model": "m", "run": run, "batch": batch(ids)})

    def metrics(step: int) -> Entry:
        args = {"model": "m", "run": "r", "metrics": {"loss": 1.0}, "step": step}
        return outbox.entry("metrics", "team", args)

    spool.append(
        [inference("r", [0]), inference("r", [1]), metrics(0), metrics(1), inference("other", [7])]
    )
    team.stop_projector()
    engine = reg._require_engine()
    engine.wait_s = 0.5  # type: ignore[attr-defined]
    with pytest.raises(ProjectionTimeout):
        spool.flush(reg)
    status = spool.status()
    assert (status.in_flight, status.rejected) == (2, 0)  # the batches of run r
    team.start_projector()
    engine.wait_s = 30  # type: ignore[attr-defined]
    append = engine.append
    appends: list[int] = []

    def counted(events: Any) -> Any:
        appends.append(len(events))
        return append(events)

    monkeypatch.setattr(engine, "append", counted)
    assert spool.flush(reg) == FlushReport(5, 0)
    assert appends == [2, 2, 1]  # the re-sent chunk, then one chunk per partition
    assert recorded_ids(reg) == [[0], [1]]
    assert recorded_ids(reg, "inference:team/m/other") == [[7]]
    assert [s for _, s, _, _ in reg.metrics("m", "r")] == [0, 1]
    assert not spool.has_pending() and reg.verify().ok
