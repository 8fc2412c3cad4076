"""Subscriptions, ``subscribe --exec`` and webhooks over a real Kafka broker.

A subscription group is a Kafka consumer group; it hands out only the events the
projection accepted (never the losing side of a race, a refused batch, an unreadable
record or a retried copy), and a commit in the middle of an append batch resumes right
after the last committed event.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

import modeltrail as mt
from modeltrail.cli import main
from modeltrail.consumers.kafka_feed import KafkaFeed, subscription_group_id
from modeltrail.consumers.subscriptions import Subscription
from modeltrail.consumers.webhooks import Backoff, Webhooks, WebhookSender
from modeltrail.core.events.envelope import Event
from modeltrail.core.events.kafka_log import KafkaLog, offset_of
from modeltrail.errors import ConcurrencyConflict, LogUnavailable, QuotaExceeded
from tests.helpers import Endpoint, Team, close_ends_a_blocked_poll, drain, verify
from tests.helpers import in_thread as _in_thread
from tests.helpers import take as _take
from tests.helpers import wait_for_records as _wait_for_records

WAIT = 30.0
"""The longest a test waits for something that should happen."""
QUIET = 1.0
"""How long a joined member polls to show that nothing more comes."""
FAST = Backoff(base_s=0.01, factor=2.0, max_s=0.05, jitter=0.0)


@pytest.fixture
def team(team: Team) -> Team:
    """The shared team (conftest.py), its projector running."""
    team.start_projector()
    return team


def _rest(sub: Subscription) -> list[Event]:
    """Whatever else comes (the member has joined: its first events came already)."""
    return drain(sub, QUIET)


def _aliases(events: list[Event]) -> list[tuple[str, int]]:
    return [(e.data["alias"], e.data["to_index"]) for e in events]


def _committed(team: Team, group: str, partition: str) -> Any:
    """What the Kafka consumer group of subscription group ``group`` committed."""
    kafka = team.kafka()
    consumer = KafkaConsumer(
        bootstrap_servers=team.bootstrap,
        group_id=subscription_group_id(team.prefix, group),
        enable_auto_commit=False,
    )
    try:
        tp: TopicPartition = kafka.topic_partition(partition)
        return consumer.committed(tp, metadata=True, timeout_ms=10_000)
    finally:
        consumer.close()


# -- subscriptions --------------------------------------------------------------------


def test_a_restart_resumes_right_after_the_last_committed_event_inside_a_batch(
    team: Team,
) -> None:
    reg = team.open("alice")
    reg.log_version("m", {"w": b"0"})
    reg.log_version("m", {"w": b"1"}, aliases=["a", "b", "c"])  # one record, four events
    first = reg.subscribe("deploy", types=["AliasMoved"])
    a, b = _take(first, 2)
    assert _aliases([a, b]) == [("a", 1), ("b", 1)]
    assert offset_of(a.position) == offset_of(b.position)  # one Kafka record
    first.commit()
    (c,) = _take(first, 1)  # handed out, never committed: the process stops here
    assert offset_of(c.position) == offset_of(a.position)
    first.close()

    # the group's offset stays on the batch's record; the metadata says 3 events were
    # handled (VersionLogged, passed over by the filter, then a and b)
    committed = _committed(team, "deploy", a.partition)
    assert (committed.offset, committed.metadata) == (offset_of(a.position), "index 3")

    again = reg.subscribe("deploy", types=["AliasMoved"])
    (resumed,) = _take(again, 1)
    assert resumed.event_id == c.event_id
    again.commit()
    reg.set_alias("m:v0", "a")
    assert _aliases(_take(again, 1)) == [("a", 0)]
    assert _rest(again) == []
    again.commit()
    again.close()
    committed = _committed(team, "deploy", a.partition)
    assert (committed.offset, committed.metadata) == (offset_of(a.position) + 2, "")


def test_a_handler_that_crashes_gets_the_event_again(team: Team) -> None:
    reg = team.open("alice")
    for i in range(2):
        reg.log_version("m", {"w": bytes([i])})
    reg.set_alias("m:v0", "production")
    reg.set_alias("m:v1", "production")
    handled: list[int] = []

    def handler(event: Event) -> None:
        if event.data["to_index"] == 1 and not handled.count(-1):
            handled.append(-1)
            raise RuntimeError("deploy failed")
        handled.append(event.data["to_index"])

    sub = reg.subscribe("deploy", alias="production", timeout=WAIT)
    with pytest.raises(RuntimeError, match="deploy failed"):
        for event in sub:
            handler(event)
            sub.commit()
    sub.close()  # the process "dies" here: v1's move was handed out, never committed

    retry = reg.subscribe("deploy", alias="production")
    (again,) = _take(retry, 1)
    handler(again)
    retry.commit()
    assert handled == [0, -1, 1]
    assert _rest(retry) == []
    retry.close()


def test_two_groups_each_see_every_event_as_consumer_groups_of_their_own(team: Team) -> None:
    reg = team.open("alice")
    for i in range(2):
        reg.log_version("m", {"w": bytes([i])})
    reg.set_alias("m:v0", "production")
    reg.set_alias("m:v1", "production")
    accepted = list(reg.events())
    ci, deployer = reg.subscribe("ci"), reg.subscribe("deployer")
    seen_ci = _take(ci, len(accepted))
    seen_deployer = _take(deployer, len(accepted))
    assert [e.event_id for e in seen_ci] == [e.event_id for e in accepted]
    assert [e.event_id for e in seen_deployer] == [e.event_id for e in accepted]
    ci.commit()
    partition = accepted[0].partition
    assert _committed(team, "ci", partition).offset == offset_of(accepted[-1].position) + 1
    assert _committed(team, "deployer", partition).offset == 0  # its start, committed
    for sub in (ci, deployer):
        sub.close()


def test_only_events_the_projection_accepted_are_handed_out(team: Team) -> None:
    alice, bob = team.open("alice"), team.open("bob")
    for i in range(3):
        alice.log_version("m", {"w": bytes([i])})
    alice.set_alias("m:v0", "production")
    alice.set_quota("team", 2)  # room for one more model
    partition = next(alice.events()).partition
    kafka = team.kafka()
    sub = alice.subscribe("everything")
    before = len(_take(sub, len(list(alice.events()))))
    records = kafka.end_offsets([partition])[partition]

    team.stop_projector()  # writers now decide on the same state; the projector judges later
    moves = [
        _in_thread(lambda: alice.set_alias("m:v1", "production")),
        _in_thread(lambda: bob.set_alias("m:v2", "production")),
    ]
    _wait_for_records(kafka, partition, records + 2)
    carol, dave = team.open("carol"), team.open("dave")  # a registry writes one at a time
    creates = [
        _in_thread(lambda: carol.create_model("n1")),
        _in_thread(lambda: dave.create_model("n2")),
    ]
    _wait_for_records(kafka, partition, records + 4)
    producer = KafkaProducer(bootstrap_servers=team.bootstrap)  # an unreadable record
    producer.send(kafka.topics["registry"], key=b"team", value=b"MT\x01garbage").get(timeout=30)
    producer.close()
    (moved_to_v0,) = [e for e in alice.events(types=["AliasMoved"]) if e.data["to_index"] == 0]
    kafka.append([moved_to_v0])  # a retried batch: its second copy changes nothing
    assert sub.poll(QUIET) is None  # in the log, but not yet judged by the projection

    team.start_projector()
    outcomes = []
    for thread, outcome in moves + creates:
        thread.join(WAIT)
        outcomes += outcome
    assert sum(isinstance(o, ConcurrencyConflict) for o in outcomes) == 1
    assert sum(isinstance(o, QuotaExceeded) for o in outcomes) == 1
    statuses = alice._read.query.rows("SELECT DISTINCT status FROM log_events")
    assert sorted(s for (s,) in statuses) == ["accepted", "duplicate", "rejected"]

    accepted = list(alice.events())[before:]
    delivered = _take(sub, len(accepted))
    assert [e.event_id for e in delivered] == [e.event_id for e in accepted]
    assert _rest(sub) == []
    sub.close()


def test_a_new_group_from_latest_skips_history_but_keeps_its_place(team: Team) -> None:
    reg = team.open("alice")
    reg.log_version("m", {"w": b"0"})
    reg.set_alias("m:v0", "production")
    sub = reg.subscribe("late", alias="production", start="latest")
    sub.close()  # never committed anything, never even joined
    reg.set_alias("m:v0", "staging")
    reg.remove_alias("m", "production")
    again = reg.subscribe("late", alias="production", start="latest")
    assert [e.type for e in _take(again, 1)] == ["AliasRemoved"]
    assert _rest(again) == []
    again.close()


def test_rewind_and_close_from_another_thread(team: Team) -> None:
    reg = team.open("alice")
    reg.log_version("m", {"w": b"0"})
    for alias in ("a", "b", "c"):
        reg.set_alias("m:v0", alias)
    sub = reg.subscribe("g", types=["AliasMoved"])
    _take(sub, 1)
    sub.commit()
    seen = _take(sub, 2)
    sub.rewind()
    assert [e.event_id for e in _take(sub, 2)] == [e.event_id for e in seen]
    close_ends_a_blocked_poll(sub, WAIT)


def test_members_of_one_group_share_its_partitions(team: Team) -> None:
    reg = team.open("alice")
    # namespaces keyed into partitions 0 and 2, which a range assignment of the 4
    # registry partitions gives to different members
    for namespace in ("team", "research"):
        reg.log_version(f"{namespace}/m", {"w": b"0"})
    one = reg.subscribe("deploy", alias="production", start="latest")
    two = reg.subscribe("deploy", alias="production", start="latest")
    deadline = time.monotonic() + WAIT
    while not (_assigned(one) and _assigned(two)):
        assert time.monotonic() < deadline, "the group never gave both members partitions"
        assert one.poll(0.05) is None and two.poll(0.05) is None
    assert _assigned(one).isdisjoint(_assigned(two))
    assert len(_assigned(one) | _assigned(two)) == 4

    reg.set_alias("team/m:v0", "production")
    reg.set_alias("research/m:v0", "production")
    got: dict[str, list[Event]] = {"one": [], "two": []}
    while len(got["one"]) + len(got["two"]) < 2:
        assert time.monotonic() < deadline + WAIT, f"only {got} came"
        for name, sub in (("one", one), ("two", two)):
            if (event := sub.poll(0.05)) is not None:
                got[name].append(event)
                sub.commit()
    assert [len(got["one"]), len(got["two"])] == [1, 1]
    assert got["one"][0].partition in _assigned(one)
    assert got["two"][0].partition in _assigned(two)
    for sub in (one, two):
        sub.close()
    reg.set_alias("research/m:v0", "staging")
    reg.remove_alias("team/m", "production")
    alone = reg.subscribe("deploy", alias="production")  # both members' commits hold
    assert [e.type for e in _take(alone, 1)] == ["AliasRemoved"]
    assert _rest(alone) == []
    alone.close()


def _assigned(sub: Subscription) -> set[str]:
    """The partitions a member holds now."""
    feed: KafkaFeed = sub._feed  # type: ignore[assignment]
    return set(feed._owned)


# -- subscribe --exec -------------------------------------------------------------------


def test_subscribe_exec_runs_once_per_accepted_move_and_keeps_its_place(
    team: Team, tmp_path: Path
) -> None:
    reg = team.open("alice")
    for i in range(3):
        reg.log_version("m", {"w": bytes([i])})
    reg.set_alias("m:v0", "production")
    reg.set_alias("m:v1", "production")
    out, env = tmp_path / "events.jsonl", tmp_path / "env.txt"
    command = f'cat >> {out}; echo "$MODELTRAIL_EVENT_PARTITION $MODELTRAIL_TO" >> {env}'
    args = [
        *team.cli_options(),
        *("--actor", "alice", "-n", "team", "subscribe", "--group", "deploy"),
        *("--alias", "production", "--model", "m", "--exec", command, "--idle-timeout", "3"),
    ]
    result = CliRunner().invoke(main, [*args, "--from", "earliest"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    moves = [e for e in reg.events(types=["AliasMoved"]) if e.data["alias"] == "production"]
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["event_id"] for e in events] == [str(m.event_id) for m in moves]
    assert {e["partition"] for e in events} == {moves[0].partition}
    assert env.read_text().splitlines() == [
        f"{moves[0].partition} team/m:v0",
        f"{moves[0].partition} team/m:v1",
    ]
    assert "(2 handled)" in result.output

    reg.set_alias("m:v2", "production")
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["data"]["to_index"] for line in out.read_text().splitlines()] == [
        0,
        1,
        2,
    ]


# -- webhooks -----------------------------------------------------------------------------


def _send_until(reg: mt.Registry, done: Callable[[], bool]) -> None:
    """Runs a webhook sender (a new process, as it were) until ``done()`` holds."""
    sender = WebhookSender(reg, backoff=FAST, poll_s=0.01)
    stop = threading.Event()
    thread = threading.Thread(target=sender.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT
        while not done():
            assert thread.is_alive(), "the sender stopped"
            assert time.monotonic() < deadline, "the sender did not get there in time"
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(WAIT)
    assert not thread.is_alive()


def _delivered(reg: mt.Registry) -> list[str]:
    return [e.data["event_id"] for e in reg.audit(types=["WebhookDelivered"])]


def _production_moves(reg: mt.Registry) -> list[str]:
    moves = reg.events(types=["AliasMoved"])
    return [str(e.event_id) for e in moves if e.data["alias"] == "production"]


def test_a_webhook_over_kafka_is_signed_retried_and_not_sent_again_by_a_new_sender(
    team: Team, endpoint: Endpoint
) -> None:
    reg = team.open("alice")
    for i in range(3):
        reg.log_version("m", {"w": bytes([i])})
    reg.set_alias("m:v0", "production")  # before the webhook: never sent
    hook, secret = Webhooks(reg).add(endpoint.url, alias="production", model="m")
    reg.set_alias("m:v1", "production")
    endpoint.statuses = [500]
    _send_until(reg, lambda: len(_delivered(reg)) == 1)
    moves = _production_moves(reg)
    assert endpoint.ids == [moves[1], moves[1]]  # a failure, then the delivery
    document = verify(secret, endpoint.received[-1].headers, endpoint.received[-1].body)
    assert document["data"]["event_id"] == moves[1]
    assert document["data"]["partition"].startswith("registry-")
    failed = reg.audit(types=["WebhookFailed"])
    assert [(f.data["status"], f.data["gave_up"]) for f in failed] == [(500, False)]

    reg.set_alias("m:v2", "production")
    _send_until(reg, lambda: len(_delivered(reg)) == 2)  # a new sender
    moves = _production_moves(reg)
    assert endpoint.ids == [moves[1], moves[1], moves[2]]
    assert Webhooks(reg).get(hook.webhook_id).delivered == 2


def test_an_event_whose_delivery_is_recorded_is_not_sent_again_though_uncommitted(
    team: Team, endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = team.open("alice")
    for i in range(2):
        reg.log_version("m", {"w": bytes([i])})
    hook, _ = Webhooks(reg).add(endpoint.url, alias="production")
    reg.set_alias("m:v0", "production")
    with monkeypatch.context() as patch:  # the sender dies after the record, before the commit
        patch.setattr(Subscription, "commit", lambda self: None)
        _send_until(reg, lambda: len(_delivered(reg)) == 1)
    group = f"{team.prefix}.webhook.{hook.webhook_id}"
    moves = list(reg.events(types=["AliasMoved"]))
    partition = moves[-1].partition
    consumer = KafkaConsumer(bootstrap_servers=team.bootstrap, group_id=group)
    try:
        committed = consumer.committed(team.kafka().topic_partition(partition), timeout_ms=10_000)
    finally:
        consumer.close()
    assert committed <= offset_of(moves[-1].position)  # the group would hand it out again

    reg.set_alias("m:v1", "production")
    _send_until(reg, lambda: len(_delivered(reg)) == 2)
    assert endpoint.ids == _production_moves(reg)  # each once: the record kept v0 unsent


def test_a_consumer_of_a_log_whose_topics_were_never_created_is_told_to_open_it_once(
    kafka_bootstrap: str, kafka_prefix: str
) -> None:
    kafka = KafkaLog(kafka_bootstrap, prefix=f"{kafka_prefix}never")
    with pytest.raises(LogUnavailable, match="open the registry once"):
        kafka.group_consumer(f"{kafka_prefix}group", list(kafka.topics.values()))
