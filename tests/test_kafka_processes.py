"""Kafka at team scale, in real processes: trainers writing at once, projector workers
killed and restarted, the broker stopped under a running producer.

Each test ends by comparing the live projection with a rebuild from Kafka offset 0 in a
fresh database (canonical export lines, byte for byte): every record applied exactly
once, in log order, whatever happened on the way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import modeltrail as mt
from modeltrail.core.db import Database
from modeltrail.core.events.kafka_log import KafkaLog, offset_of
from modeltrail.core.kafka_engine import KafkaEngine, open_kafka_engine
from modeltrail.core.projections.runner import export
from modeltrail.errors import LogUnavailable
from tests.kafka_traffic import mixed_traffic
from tests.services import _services, _unavailable

pytestmark = [pytest.mark.services, pytest.mark.slow]

STALE = b"\x00" * 32  # the prev_hash of the claims the traffic makes stale on purpose
MODELTRAIL = str(Path(sys.executable).parent / "modeltrail")
WORKER = """
import sys
from modeltrail.consumers.projector import run_worker
from modeltrail.core.db import Database
from modeltrail.core.kafka_engine import open_kafka_engine

db, bootstrap, prefix, group, batch = sys.argv[1:]
engine = open_kafka_engine(Database(db), bootstrap, prefix=prefix)
run_worker(engine, group=group, max_records=int(batch))
"""
TRAINER = """
import sys
import modeltrail as mt
from modeltrail.errors import ConcurrencyConflict

bootstrap, prefix, db, index = sys.argv[1:]
name = "trainer" + index
reg = mt.open(name, kafka=bootstrap, kafka_prefix=prefix, db=db, actor=name, namespace="team")
run = reg.run("shared", "run" + index, config={"seed": int(index)})
for step in range(20):
    assert run.log_metrics({"loss": 1 / (step + 1), "acc": step / 20}, step=step)
while True:  # trainers race for the next version number: the loser decides again
    try:
        version = run.log_version({"weights.bin": ("trainer" + index).encode()})
        break
    except ConcurrencyConflict:
        continue
run.finish()
print(version.label)
"""


def _worker(db: str, bootstrap: str, prefix: str, batch: int = 500) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, db, bootstrap, prefix, f"{prefix}projector", str(batch)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    process.send_signal(sig)
    return process.wait(timeout=60)


def _projected(engine: KafkaEngine) -> int:
    """Records the projection has applied, over every partition."""
    return sum(offset_of(p) + 1 for p in engine.checkpoints().values())


def _wait_caught_up(engine: KafkaEngine, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        ends = engine.kafka.end_offsets()
        done = engine.checkpoints()
        if all(end == 0 or offset_of(done.get(p, 0)) + 1 == end for p, end in ends.items()):
            return
        assert time.monotonic() < deadline, f"projection stuck at {done}, log ends at {ends}"
        time.sleep(0.1)


def _rebuilt_export(db: str, bootstrap: str, prefix: str) -> list[str]:
    engine = open_kafka_engine(Database(db), bootstrap, prefix=prefix)
    try:
        engine.rebuild()
        return list(export(engine.database.reader(), engine.runner.specs))
    finally:
        engine.close()


def _export(engine: KafkaEngine) -> list[str]:
    return list(export(engine.database.reader(), engine.runner.specs))


def _append_all(kafka: KafkaLog, batches: list[list[Any]]) -> None:
    pending = [kafka.submit(batch) for batch in batches]  # pipelined
    for appended in pending:
        appended.result()


def test_trainers_in_several_processes_write_at_once(
    kafka_bootstrap: str, kafka_prefix: str, pg_databases: Callable[[], str], tmp_path: Path
) -> None:
    db = pg_databases()
    admin = mt.open(
        tmp_path / "admin", kafka=kafka_bootstrap, kafka_prefix=kafka_prefix, db=db,
        actor="admin", namespace="team",
    )  # fmt: skip
    cli = [MODELTRAIL, "--kafka", kafka_bootstrap, "--kafka-prefix", kafka_prefix, "--db", db]
    cli += ["--home", str(tmp_path / "cli"), "project", "--group", f"{kafka_prefix}projector"]
    workers = [subprocess.Popen(cli, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        admin.create_model("shared")
        trainers = [
            subprocess.Popen(
                cwd=tmp_path,
                args=[sys.executable, "-c", TRAINER, kafka_bootstrap, kafka_prefix, db, str(i)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for i in range(3)
        ]
        outputs = [t.communicate(timeout=300) for t in trainers]
        for trainer, (_, err) in zip(trainers, outputs, strict=True):
            assert trainer.returncode == 0, err.decode()[-3000:]
        labels = sorted(out.decode().strip() for out, _ in outputs)
        assert labels == ["v0", "v1", "v2"]
    finally:
        codes = [_stop(w) for w in workers]  # SIGTERM: each finishes its batch and leaves
    assert codes == [0, 0]

    versions = admin.versions("shared")
    assert sorted(v.run or "" for v in versions) == ["run0", "run1", "run2"]
    for i in range(3):
        assert len(admin.metrics("shared", f"run{i}")) == 40
        assert admin.run_info("shared", f"run{i}").status == "finished"
    report = admin.verify()
    assert report.ok, report.problems
    assert _rebuilt_export(pg_databases(), kafka_bootstrap, kafka_prefix) == admin.export()
    admin.close()


def test_a_projector_killed_mid_batch_resumes_to_exactly_a_clean_rebuild(
    kafka_bootstrap: str, kafka_prefix: str, pg_databases: Callable[[], str]
) -> None:
    db = pg_databases()
    engine = open_kafka_engine(Database(db), kafka_bootstrap, prefix=kafka_prefix)
    batches = mixed_traffic(namespaces=4, runs=3, batches=1200, events_per_batch=20)
    _append_all(engine.kafka, batches)
    total = sum(engine.kafka.end_offsets().values())

    kills = 0
    for _ in range(2):  # small transactions, so a kill lands inside one
        worker = _worker(db, kafka_bootstrap, kafka_prefix, batch=3)
        deadline = time.monotonic() + 120
        target = _projected(engine) + total // 5
        while _projected(engine) < target and worker.poll() is None:
            assert time.monotonic() < deadline, "the projector made no progress"
            time.sleep(0.01)
        assert _stop(worker, signal.SIGKILL) == -signal.SIGKILL
        kills += 1
        assert _projected(engine) < total, "the projector finished before it could be killed"

    worker = _worker(db, kafka_bootstrap, kafka_prefix)
    try:
        _wait_caught_up(engine)
    finally:
        assert _stop(worker) == 0
    live = _export(engine)
    statuses = engine.database.reader().rows(
        "SELECT status, COUNT(*) FROM log_events GROUP BY status ORDER BY status"
    )
    assert {s for s, _ in statuses} == {"accepted", "duplicate", "rejected"}
    assert kills == 2
    assert _rebuilt_export(pg_databases(), kafka_bootstrap, kafka_prefix) == live
    engine.close()


@pytest.fixture
def private_kafka() -> Iterator[tuple[str, Callable[[], None]]]:
    """A broker of this test's own, and a function that stops it and starts it again on
    the same port with the same data (as an operator's restart would)."""
    services = _services()
    base = Path(tempfile.mkdtemp(prefix="modeltrail-kafka-restart-"))
    state: dict[str, Any] | None = None
    error = ""
    try:
        state = services.start("kafka", base, owner_pid=os.getpid())
    except Exception as exc:  # any failure to start means "no server", never a crash
        error = str(exc).strip() or type(exc).__name__
    if state is None:
        with contextlib.suppress(Exception):  # a half-started server must not outlive us
            services.stop("kafka", base, remove=True)
        shutil.rmtree(base, ignore_errors=True)
        first, _, details = error.partition("\n")
        _unavailable(f"kafka server could not start: {first}", details)  # fails when required

    def restart() -> None:
        services.stop("kafka", base)  # SIGTERM: the broker shuts down cleanly, data stays
        sdir = Path(state["dir"])
        java = services._java_cmd(services.kafka_lib_dir(), sdir)
        pid = services._spawn(
            [*java, "kafka.Kafka", str(sdir / "server.properties")], sdir, sdir / "stdout.log"
        )
        services._wait_kafka(state["url"], pid, 120)
        services._write_state("kafka", base, {**state, "pid": pid})

    try:
        yield str(state["url"]), restart
    finally:
        services.stop("kafka", base, remove=True)
        shutil.rmtree(base, ignore_errors=True)


def test_a_broker_restart_under_a_running_producer_loses_and_duplicates_nothing(
    private_kafka: tuple[str, Callable[[], None]], tmp_path: Path
) -> None:
    bootstrap, restart = private_kafka
    kafka = KafkaLog(bootstrap, prefix="restart", timeout_s=15)
    kafka.ensure_topics()
    batches = mixed_traffic(namespaces=2, runs=2, batches=400, events_per_batch=5)
    acknowledged: list[bytes] = []
    retries = 0
    failures: list[BaseException] = []
    started = threading.Event()

    def produce() -> None:
        nonlocal retries
        try:
            for number, batch in enumerate(batches):
                while True:
                    try:
                        placed = kafka.append(batch)
                    except LogUnavailable:
                        retries += 1  # the same batch again: recognised by its event ids
                        time.sleep(0.2)
                        continue
                    acknowledged.extend(e.event_id.bytes for e in placed)
                    break
                if number == 50:
                    started.set()
                time.sleep(0.005)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    assert started.wait(120)
    restart()
    at_restart = len(acknowledged)
    producer.join(timeout=600)
    assert not producer.is_alive() and failures == []
    assert at_restart < len(acknowledged), "the producer was not running across the restart"
    kafka.close()

    engine = KafkaEngine(
        Database(f"sqlite:///{tmp_path / 'projection.db'}"),
        KafkaLog(bootstrap, prefix="restart"),
    )
    engine.prepare()
    engine.catch_up()
    reader = engine.database.reader()
    accepted = [bytes(r[0]) for r in reader.rows(
        "SELECT event_id FROM log_events WHERE status = 'accepted'"
    )]  # fmt: skip
    assert len(accepted) == len(set(accepted)), "an event was applied twice"
    lost = set(acknowledged) - set(accepted)
    stale = {e.event_id.bytes for b in batches for e in b if e.prev_hash == STALE}
    assert lost <= stale, f"{len(lost - stale)} acknowledged events were lost"
    assert set(accepted) == {e.event_id.bytes for b in batches for e in b} - stale
    engine.close()
