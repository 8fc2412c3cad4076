"""Durable subscriptions on the SQL log: resume after the last commit, at-least-once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import modeltrail as mt
from modeltrail.consumers.subscriptions import Subscription
from modeltrail.core.events.envelope import Event
from modeltrail.errors import InvalidInput, InvalidName, ReadOnly
from tests.conftest import ManualClock

WAIT = 10.0  # the longest any test waits for an event that should come


def _versions(reg: mt.Registry, model: str, n: int) -> None:
    for i in range(n):
        reg.log_version(model, {"w": f"{model}-{i}".encode()})


def _moves(events: list[Event]) -> list[tuple[str, str, int]]:
    return [(e.data["owner"], e.data["alias"], e.data["to_index"]) for e in events]


def _drain(sub: Subscription, timeout: float = 0.05) -> list[Event]:
    found = []
    while (event := sub.poll(timeout)) is not None:
        found.append(event)
    return found


def test_a_restarted_group_resumes_right_after_its_last_commit(reg: mt.Registry) -> None:
    _versions(reg, "m", 3)
    for i in range(3):
        reg.set_alias(f"m:v{i}", "production")
    first = reg.subscribe("deploy", model="m", alias="production")
    one = first.poll(WAIT)
    assert one is not None
    first.commit()
    two = first.poll(WAIT)  # handed out, never committed
    assert two is not None
    first.close()

    again = reg.subscribe("deploy", model="m", alias="production")
    resumed = _drain(again)
    assert resumed[0].event_id == two.event_id
    assert _moves(resumed) == [("m", "production", 1), ("m", "production", 2)]
    again.commit()
    again.close()
    assert _drain(reg.subscribe("deploy", model="m", alias="production")) == []


def test_a_handler_that_crashes_gets_the_event_again(reg: mt.Registry) -> None:
    _versions(reg, "m", 2)
    reg.set_alias("m:v0", "production")
    reg.set_alias("m:v1", "production")
    handled: list[str] = []

    def handler(event: Event) -> None:
        if event.data["to_index"] == 1 and not handled.count("crashed"):
            handled.append("crashed")
            raise RuntimeError("deploy failed")
        handled.append(str(event.event_id))

    sub = reg.subscribe("deploy", alias="production", timeout=0.05)
    with pytest.raises(RuntimeError, match="deploy failed"):
        for event in sub:
            handler(event)
            sub.commit()
    sub.close()  # the process "dies" here: v1's move was handed out, never committed

    retry = reg.subscribe("deploy", alias="production", timeout=0.05)
    redelivered = list(retry)
    assert _moves(redelivered) == [("m", "production", 1)]
    handler(redelivered[0])
    retry.commit()
    assert handled[0] != handled[-1]
    assert handled[-1] == str(redelivered[0].event_id)


def test_rewind_hands_out_everything_after_the_last_commit_again(reg: mt.Registry) -> None:
    _versions(reg, "m", 3)
    for i in range(3):
        reg.set_alias(f"m:v{i}", "staging")
    sub = reg.subscribe("g", alias="staging")
    first = sub.poll(WAIT)
    assert first is not None
    sub.commit()
    seen = _drain(sub)
    assert len(seen) == 2
    sub.rewind()
    assert [e.event_id for e in _drain(sub)] == [e.event_id for e in seen]


def test_two_groups_each_see_every_event(reg: mt.Registry) -> None:
    _versions(reg, "m", 2)
    reg.set_alias("m:v0", "production")
    reg.set_alias("m:v1", "production")
    a = reg.subscribe("ci", alias="production")
    b = reg.subscribe("deployer", alias="production")
    seen_a, seen_b = _drain(a), _drain(b)
    a.commit()
    assert [e.event_id for e in seen_a] == [e.event_id for e in seen_b]
    assert len(seen_a) == 2
    everything = reg.subscribe("everything")
    assert [e.position for e in _drain(everything)] == list(range(1, reg.head() + 1))


def test_the_filters_pick_alias_moves_of_one_owner(reg: mt.Registry) -> None:
    _versions(reg, "m", 2)
    _versions(reg, "other", 1)
    reg.set_alias("m:v0", "production")
    reg.set_alias("other:v0", "production")
    reg.set_alias("m:v1", "staging")
    reg.link("m:v1", "classifier", aliases=["production"])
    reg.remove_alias("m", "production")

    assert _moves(_drain(reg.subscribe("a", model="m", alias="production"))[:1]) == [
        ("m", "production", 0)
    ]
    removal = _drain(reg.subscribe("b", model="team/m", alias="production"))[-1]
    assert removal.type == "AliasRemoved"
    only_moves = _drain(reg.subscribe("c", model="m", types=["AliasMoved"], alias="production"))
    assert [e.type for e in only_moves] == ["AliasMoved"]
    registered = _drain(reg.subscribe("d", model="classifier", alias="production"))
    assert _moves(registered) == [("classifier", "production", 1)]
    any_owner = _drain(reg.subscribe("e", alias="production"))
    assert [e.data["owner"] for e in any_owner] == ["m", "other", "classifier", "m"]
    of_model = _drain(reg.subscribe("f", model="m"))
    assert {e.stream for e in of_model} == {"model:team/m"}
    assert "VersionLogged" in {e.type for e in of_model}


def test_a_blocked_subscription_receives_an_event_as_it_lands(reg: mt.Registry) -> None:
    _versions(reg, "m", 1)
    sub = reg.subscribe("deploy", alias="production", start="latest")
    assert sub.poll(0.05) is None
    mover = threading.Timer(0.1, lambda: reg.set_alias("m:v0", "production"))
    mover.start()
    try:
        event = sub.poll(WAIT)
    finally:
        mover.join()
    assert event is not None
    assert _moves([event]) == [("m", "production", 0)]


def test_iteration_stops_after_its_timeout_and_close_ends_a_blocked_poll(
    reg: mt.Registry,
) -> None:
    sub = reg.subscribe("idle", timeout=0.05)
    assert list(sub) == []
    blocked = reg.subscribe("blocked")
    result: list[Event | None] = []
    waiter = threading.Thread(target=lambda: result.append(blocked.poll(None)))
    waiter.start()
    time.sleep(0.05)
    blocked.close()
    waiter.join(WAIT)
    assert not waiter.is_alive()
    assert result == [None]


def test_a_new_group_from_latest_skips_history_but_keeps_its_place(reg: mt.Registry) -> None:
    _versions(reg, "m", 3)
    reg.set_alias("m:v0", "production")
    sub = reg.subscribe("late", alias="production", start="latest")
    sub.close()  # never committed anything
    reg.set_alias("m:v1", "production")
    again = reg.subscribe("late", alias="production", start="latest")
    assert _moves(_drain(again)) == [("m", "production", 1)]


def test_a_commit_moves_past_events_the_filter_skipped(reg: mt.Registry) -> None:
    _versions(reg, "m", 2)
    reg.set_alias("m:v0", "production")
    _versions(reg, "n", 5)
    sub = reg.subscribe("deploy", alias="production")
    assert len(_drain(sub)) == 1
    sub.commit()
    assert sub.committed == reg.head()


def test_cursors_survive_a_projection_rebuild(reg: mt.Registry) -> None:
    _versions(reg, "m", 2)
    reg.set_alias("m:v0", "production")
    sub = reg.subscribe("deploy", alias="production")
    assert len(_drain(sub)) == 1
    sub.commit()
    reg.rebuild()
    reg.set_alias("m:v1", "production")
    assert _moves(_drain(reg.subscribe("deploy", alias="production"))) == [("m", "production", 1)]


def test_a_group_resumes_from_another_registry_on_the_same_home(
    home: Path, clock: ManualClock
) -> None:
    with mt.open(home, actor="alice", namespace="team", clock=clock) as one:
        _versions(one, "m", 2)
        one.set_alias("m:v0", "production")
        sub = one.subscribe("deploy", alias="production")
        assert sub.poll(WAIT) is not None
        sub.commit()
        one.set_alias("m:v1", "production")
    with mt.open(home, actor="bob", namespace="team", clock=clock) as two:
        assert _moves(_drain(two.subscribe("deploy", alias="production"))) == [
            ("m", "production", 1)
        ]


def test_bad_subscriptions_are_refused_naming_the_rule(reg: mt.Registry) -> None:
    with pytest.raises(InvalidName, match="subscription group 'a b'"):
        reg.subscribe("a b")
    with pytest.raises(InvalidInput, match="AliasMovd"):
        reg.subscribe("g", types=["AliasMovd"])
    with pytest.raises(InvalidInput, match="alias filter only matches"):
        reg.subscribe("g", types=["VersionLogged"], alias="production")
    with pytest.raises(InvalidName, match="not a version"):
        reg.subscribe("g", model="m:v1")
    with pytest.raises(InvalidInput, match="start 'now'"):
        reg.subscribe("g", start="now")
    _versions(reg, "m", 1)
    with pytest.raises(ReadOnly):
        reg.as_of(1).subscribe("g")
