"""The registry over a real Kafka broker, with its projection in a real PostgreSQL.

Commands append to Kafka and wait for the projector's verdict; refusals the projector
records come back as their typed errors; reads (events, audit, as_of, verify) are SQL on
the projection's mirror of the log; a rebuild from offset 0 equals the live projection.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import modeltrail as mt
from modeltrail.cli import main
from modeltrail.core import commands as cmd
from modeltrail.core.db import Database
from modeltrail.core.engine import Engine
from modeltrail.core.events.codec import default_codec
from modeltrail.core.events.envelope import Draft, to_datetime
from modeltrail.core.events.kafka_log import (
    MAX_RECORD_EVENTS,
    KafkaLog,
    decode_record,
    encode_record,
    offset_of,
    position_of,
)
from modeltrail.core.events.seal import Sealer
from modeltrail.core.kafka_engine import KafkaEngine, open_kafka_engine
from modeltrail.core.projections.epochs import pack
from modeltrail.core.projections.streams import INDEPENDENT_TYPES
from modeltrail.errors import (
    AlreadyExists,
    ConcurrencyConflict,
    IntegrityError,
    InvalidInput,
    InvalidName,
    LogUnavailable,
    ProjectionTimeout,
    QuotaExceeded,
    ReadOnly,
)
from tests.helpers import Team, in_thread, wait_for_records

# -- commands and reads -----------------------------------------------------------------


def test_commands_over_kafka_see_their_own_writes(team: Team) -> None:
    team.start_projector()
    reg = team.open("alice")
    v0 = reg.log_version("resnet", {"w": b"0"}, metadata={"acc": 0.5})
    v1 = reg.log_version("resnet", {"w": b"1"}, aliases=["candidate"])
    assert (v0.label, v1.label) == ("v0", "v1")
    assert reg.log_version("resnet", {"w": b"1"}).label == "v1"  # same files: no version
    reg.set_alias("resnet:v0", "production")
    reg.set_alias("resnet:v1", "production", expected="v0")
    reg.link("resnet:production", "classifier", aliases=["staging"])
    with reg.run("resnet", "lr-0.1", config={"lr": 0.1}) as run:
        run.log_metrics({"loss": 0.25}, step=1)
    assert reg.get("classifier:staging").ref == "team/resnet:v1"
    assert [m.to_label for m in reg.alias_history("resnet", "production")] == ["v0", "v1"]
    assert reg.metrics("resnet", "lr-0.1")[0][:3] == ("loss", 1, 0.25)

    other = team.open("bob")  # another process's view: the same projection
    assert other.model("resnet").aliases == {"candidate": "v1", "production": "v1", "latest": "v1"}
    assert [e.type for e in other.audit(actor="alice", types=["AliasMoved"])] == ["AliasMoved"] * 4
    events = list(reg.events())
    assert {e.partition for e in events} == {events[0].partition}  # one namespace, one partition
    assert events[0].partition.startswith("registry-")
    report = reg.verify()
    assert report.ok, report.problems
    assert report.events_checked == len(events)


def test_a_refusal_the_projector_records_comes_back_as_its_typed_error(team: Team) -> None:
    team.start_projector()
    alice, bob = team.open("alice"), team.open("bob")
    alice.set_quota("team", 1)
    partition = next(alice.events()).partition
    kafka = team.kafka()
    before = kafka.end_offsets([partition])[partition]
    team.stop_projector()
    # both decide on a namespace with no model; the projector then applies them in log order
    first, first_outcome = in_thread(lambda: alice.create_model("a"))
    wait_for_records(kafka, partition, before + 1)
    second, second_outcome = in_thread(lambda: bob.create_model("b"))
    wait_for_records(kafka, partition, before + 2)
    team.start_projector()
    first.join(timeout=60)
    second.join(timeout=60)
    assert not isinstance(first_outcome[0], Exception)
    assert isinstance(second_outcome[0], QuotaExceeded)
    assert "quota is 1" in str(second_outcome[0])
    assert [m.name for m in alice.models()] == ["a"]


def test_two_writers_racing_to_move_one_alias_exactly_one_wins(team: Team) -> None:
    team.start_projector()
    alice, bob = team.open("alice"), team.open("bob")
    for i in range(3):
        alice.log_version("m", {"w": bytes([i])})
    alice.set_alias("m:v0", "production")
    partition = next(alice.events()).partition
    kafka = team.kafka()
    before = kafka.end_offsets([partition])[partition]
    team.stop_projector()  # both writers now decide on production -> v0
    a, a_outcome = in_thread(lambda: alice.set_alias("m:v1", "production"))
    b, b_outcome = in_thread(lambda: bob.set_alias("m:v2", "production"))
    wait_for_records(kafka, partition, before + 2)
    team.start_projector()
    a.join(timeout=60)
    b.join(timeout=60)
    outcomes = [a_outcome[0], b_outcome[0]]
    conflicts = [o for o in outcomes if isinstance(o, ConcurrencyConflict)]
    assert len(conflicts) == 1, outcomes
    assert [o for o in outcomes if isinstance(o, Exception) and o not in conflicts] == []
    winner = "v1" if a_outcome[0] is None else "v2"
    moves = alice.alias_history("m", "production")
    assert [m.to_label for m in moves] == ["v0", winner]
    assert alice.model("m").aliases["production"] == winner
    # nothing lost: the losing record is in the log, rejected with its reason
    rejected = alice._read.query.rows("SELECT type, reason FROM rejections")
    assert [r[0] for r in rejected] == ["AliasMoved"]
    assert str(rejected[0][1]).startswith("ConcurrencyConflict: ")
    assert alice.verify().ok


def test_threads_of_one_process_do_not_race_each_other(team: Team) -> None:
    team.start_projector()
    reg = team.open("alice")
    reg.run("m", "r", config={})
    errors: list[BaseException] = []

    def log(thread: int) -> None:
        try:
            for step in range(10):
                reg._write(
                    lambda b, s=step: cmd.log_metrics(b, "team", "m", "r", {f"t{thread}": s}, s)
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=log, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(reg.metrics("m", "r")) == 30


def test_without_a_projector_a_command_times_out_and_takes_effect_later(team: Team) -> None:
    team.start_projector()
    reg = team.open("alice")
    reg.create_model("first")
    team.stop_projector()
    engine = reg._require_engine()
    assert isinstance(engine, KafkaEngine)
    engine.wait_s = 0.5
    with pytest.raises(ProjectionTimeout, match="projector running"):
        reg.create_model("second")
    team.start_projector()
    engine.wait_s = 30
    reg.create_model("third")  # by now the projector has applied "second" too
    assert [m.name for m in reg.models()] == ["first", "second", "third"]


def test_as_of_a_moment_cuts_every_partition_at_that_time(team: Team) -> None:
    team.start_projector()
    reg = team.open("alice")
    reg.log_version("m", {"w": b"0"})
    time.sleep(0.01)  # the broker's append clock counts milliseconds
    reg.log_version("m", {"w": b"1"})
    first_version = next(e for e in reg.events(types=["VersionLogged"]))
    then = to_datetime(first_version.appended_at)
    past = reg.as_of(then)
    assert [v.label for v in past.versions("m")] == ["v0"]
    assert [e.type for e in past.events()] == ["NamespaceCreated", "ModelCreated", "VersionLogged"]
    with pytest.raises(ReadOnly):
        past.create_model("late")
    assert [v.label for v in reg.as_of(then + timedelta(hours=1)).versions("m")] == ["v0", "v1"]
    by_position = reg.as_of(first_version.position)
    assert [v.label for v in by_position.versions("m")] == ["v0"]


def test_inference_batches_go_to_their_own_topic_and_fold_into_epochs(team: Team) -> None:
    assert {"InferenceBatchRecorded"} == INDEPENDENT_TYPES  # the Kafka log routes by these
    team.start_projector()
    reg = team.open("alice")
    reg.run("m", "r", config={}).finish()
    batch = {
        "dataset_type": "train",
        "n_epoch": 3,
        "n_samples": 2,
        "num_classes": 2,
        "input_ids": pack("q", [10, 11]),
        "labels": pack("i", [0, 1]),
        "predictions": pack("i", [0, 0]),
        "losses": pack("f", [0.1, 2.0]),
        "confidences": pack("f", [0.9, 0.6]),
    }
    reg._write(lambda b: cmd.record_inference(b, "team", "m", "r", batch))
    (recorded,) = reg.events(types=["InferenceBatchRecorded"])
    assert recorded.partition.startswith("inference-")
    assert recorded.stream == "inference:team/m/r"
    rows = reg._read.query.rows("SELECT n_samples, correct FROM epochs WHERE run = 'r'")
    assert rows == [(2, 1)]


# -- rebuilds ---------------------------------------------------------------------------


def test_a_rebuild_of_the_postgres_projection_from_offset_0_equals_the_live_one(
    team: Team, pg_databases: Callable[[], str]
) -> None:
    team.start_projector()
    alice, bob = team.open("alice"), team.open("bob")
    for i in range(5):
        alice.log_version("m", {"w": bytes([i])}, metadata={"i": i})
    alice.set_alias("m:v1", "production")
    bob.link("m:v2", "best", aliases=["staging"])
    with pytest.raises(AlreadyExists):
        bob.create_model("m")
    stale = Sealer(default_codec()).seal(  # a claim no writer would win: rejected
        Draft("QuotaSet", "namespace:team", "team", {"namespace": "team", "max_models": 9}),
        alice._require_engine().log.stream_head("model:team/m"),
        actor="mallory",
        recorded_at=1,
    )
    with pytest.raises((ConcurrencyConflict, IntegrityError)):
        alice._require_engine().log.append([stale])
    live = alice.export()
    assert any(line.startswith('["rejections"') for line in live)

    rebuilt = team.engine(pg_databases())
    rebuilt.rebuild()
    from modeltrail.core.projections.runner import export

    assert list(export(rebuilt.database.reader(), rebuilt.runner.specs)) == live
    rebuilt.close()

    result = CliRunner().invoke(
        main,
        [*team.cli_options(), "project", "--rebuild"],
    )
    assert result.exit_code == 0, result.output
    assert alice.export() == live
    assert alice.verify().ok


def test_an_unreadable_record_is_rejected_and_the_projection_carries_on(
    team: Team, pg_databases: Callable[[], str]
) -> None:
    from kafka import KafkaProducer

    team.start_projector()
    reg = team.open("alice")
    reg.create_model("before")
    producer = KafkaProducer(bootstrap_servers=team.bootstrap)
    producer.send(f"{team.prefix}.registry", key=b"team", value=b"MT\x01garbage").get(timeout=30)
    producer.close()
    reg.create_model("after")
    assert [m.name for m in reg.models()] == ["after", "before"]
    (reason,) = [r[0] for r in reg._read.query.rows("SELECT reason FROM rejections")]
    assert str(reason).startswith("IntegrityError: Kafka record registry-")
    rebuilt = team.engine(pg_databases())
    rebuilt.rebuild()
    from modeltrail.core.projections.runner import export

    assert list(export(rebuilt.database.reader(), rebuilt.runner.specs)) == reg.export()
    rebuilt.close()


def test_a_projection_database_belongs_to_one_log(team: Team, tmp_path: Path) -> None:
    team.open("alice").close()
    with pytest.raises(InvalidInput, match="prefix"):
        open_kafka_engine(Database(team.db), team.bootstrap, prefix=f"{team.prefix}other")
    with pytest.raises(InvalidInput, match="Kafka"):
        Engine(Database(team.db)).prepare()
    embedded = f"sqlite:///{tmp_path / 'embedded.db'}"
    Engine(Database(embedded)).prepare()
    with pytest.raises(InvalidInput, match="embedded"):
        open_kafka_engine(Database(embedded), team.bootstrap, prefix=team.prefix)


def test_a_registry_opens_while_its_broker_is_away_and_writes_raise_log_unavailable(
    tmp_path: Path,
) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        away = f"127.0.0.1:{probe.getsockname()[1]}"
    reg = mt.open(tmp_path / "home", kafka=away, kafka_prefix="away", actor="a", namespace="team")
    try:
        assert reg.models() == []  # reads need only the projection database
        with pytest.raises(LogUnavailable, match="safe"):
            reg.create_model("m")
    finally:
        reg.close()


def test_kafka_status_shows_each_partition_projected(team: Team) -> None:
    team.start_projector()
    team.open("alice").create_model("m")
    result = CliRunner().invoke(
        main,
        [*team.cli_options(), "kafka", "status", "--json"],
    )
    assert result.exit_code == 0, result.output
    import json

    rows = json.loads(result.output)
    assert sum(r["records"] for r in rows) == 1
    assert all(r["lag"] == 0 for r in rows)


# -- the record format --------------------------------------------------------------------


def _quota(namespace: str, count: int) -> dict[str, Any]:
    return {"namespace": namespace, "max_models": count}


def _events(count: int, namespace: str = "ns", type_: str = "QuotaSet") -> list[Any]:
    sealer = Sealer(default_codec())
    from modeltrail.core.events.envelope import EMPTY_STREAM, StreamHead

    head = EMPTY_STREAM
    made = []
    for i in range(count):
        event = sealer.seal(
            Draft(
                type_,
                f"namespace:{namespace}",
                namespace,
                {"namespace": namespace, "max_models": i},
            ),
            head,
            actor="tester",
            recorded_at=1_767_225_600_000_000 + i,
        )
        head = StreamHead(event.stream_version, event.hash)
        made.append(event)
    return made


def test_a_record_holds_its_batch_byte_for_byte() -> None:
    events = _events(3)
    decoded = decode_record(encode_record(events), "registry-2", 7, 123)
    assert [(e.position, e.partition, e.appended_at) for e in decoded] == [
        (position_of(7, i), "registry-2", 123) for i in range(3)
    ]
    assert [e.at(-1, 0) for e in decoded] == events
    assert all(offset_of(e.position) == 7 for e in decoded)


@pytest.mark.parametrize("cut", [1, 10, 40, -1])
def test_truncated_or_padded_records_are_refused(cut: int) -> None:
    value = encode_record(_events(2))
    broken = value[:cut] if cut > 0 else value + b"\x00"
    with pytest.raises(IntegrityError, match="registry-0@5"):
        decode_record(broken, "registry-0", 5, 0)


def test_a_batch_must_fit_one_partition_and_the_index_bits() -> None:
    log = KafkaLog("127.0.0.1:9", prefix="unused")  # never connects: refused before sending
    one = _events(1)
    with pytest.raises(InvalidInput, match="1,048,575 per append"):
        log.submit(one * (MAX_RECORD_EVENTS + 1))
    with pytest.raises(InvalidInput, match="namespaces"):
        log.submit(_events(1, "a") + _events(1, "b"))
    inference = dataclasses.replace(one[0], type="InferenceBatchRecorded")
    with pytest.raises(InvalidInput, match="mixes"):
        log.submit([*one, inference])
    with pytest.raises(InvalidInput, match="streams"):
        log.submit(
            [
                dataclasses.replace(inference, stream="inference:ns/m/a"),
                dataclasses.replace(inference, stream="inference:ns/m/b"),
            ]
        )
    with pytest.raises(InvalidName, match="Kafka topic prefix"):
        KafkaLog("127.0.0.1:9", prefix="bad prefix")
