"""Durable subscriptions on the SQL log and on a real Kafka broker: resume after the last
commit, at-least-once; the SQL cursor's own rules at the end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import modeltrail as mt
from modeltrail.consumers.execute import ExecConsumer
from modeltrail.core.events.envelope import Event
from modeltrail.errors import InvalidInput, InvalidName, ReadOnly
from tests.conftest import ManualClock
from tests.helpers import Team, close_ends_a_blocked_poll
from tests.helpers import drain as _drain
from tests.helpers import log_versions as _versions
from tests.helpers import take as _take

WAIT = 10.0  # the longest any test waits for an event that should come


@pytest.fixture(params=["sqlite", "kafka"])
def any_reg(
    request: pytest.FixtureRequest, home: Path, clock: ManualClock
) -> Iterator[mt.Registry]:
    """A registry on the embedded SQLite log, then on Kafka (PostgreSQL projection)."""
    if request.param == "sqlite":
        with mt.open(home, actor="alice", namespace="team", clock=clock) as registry:
            yield registry
        return
    team = Team(
        request.getfixturevalue("kafka_bootstrap"),
        request.getfixturevalue("kafka_prefix"),
        request.getfixturevalue("pg_database"),
        home,
    )
    team.start_projector()
    try:
        yield team.open("alice")
    finally:
        team.close()


def _quiet(reg: mt.Registry) -> float:
    """How long a poll waits to show that nothing more comes: a Kafka member's first poll
    also joins its group."""
    return 0.05 if reg.settings.kafka is None else 0.5


def _moves(events: list[Event]) -> list[tuple[str, str, int]]:
    return [(e.data["owner"], e.data["alias"], e.data["to_index"]) for e in events]


def test_a_restarted_group_resumes_right_after_its_last_commit(any_reg: mt.Registry) -> None:
    reg = any_reg
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
    resumed = _take(again, 2)
    assert resumed[0].event_id == two.event_id
    assert _moves(resumed) == [("m", "production", 1), ("m", "production", 2)]
    assert _drain(again, _quiet(reg)) == []
    again.commit()
    again.close()
    reg.set_alias("m:v0", "production")
    last = reg.subscribe("deploy", model="m", alias="production")
    assert _moves(_take(last, 1)) == [("m", "production", 0)]  # only what came since
    assert _drain(last, _quiet(reg)) == []
    last.close()


def test_a_handler_that_crashes_gets_the_event_again(any_reg: mt.Registry) -> None:
    reg = any_reg
    _versions(reg, "m", 2)
    reg.set_alias("m:v0", "production")
    reg.set_alias("m:v1", "production")
    handled: list[str] = []

    def handler(event: Event) -> None:
        if event.data["to_index"] == 1 and not handled.count("crashed"):
            handled.append("crashed")
            raise RuntimeError("deploy failed")
        handled.append(str(event.event_id))

    sub = reg.subscribe("deploy", alias="production", timeout=WAIT)
    with pytest.raises(RuntimeError, match="deploy failed"):
        for event in sub:
            handler(event)
            sub.commit()
    sub.close()  # the process "dies" here: v1's move was handed out, never committed

    retry = reg.subscribe("deploy", alias="production")
    redelivered = _take(retry, 1)
    assert _moves(redelivered) == [("m", "production", 1)]
    handler(redelivered[0])
    retry.commit()
    assert _drain(retry, _quiet(reg)) == []
    retry.close()
    assert handled[0] != handled[-1]
    assert handled[-1] == str(redelivered[0].event_id)


def test_rewind_hands_out_everything_after_the_last_commit_again(any_reg: mt.Registry) -> None:
    reg = any_reg
    _versions(reg, "m", 3)
    for i in range(3):
        reg.set_alias(f"m:v{i}", "staging")
    sub = reg.subscribe("g", alias="staging")
    first = sub.poll(WAIT)
    assert first is not None
    sub.commit()
    seen = _take(sub, 2)
    sub.rewind()
    assert [e.event_id for e in _take(sub, 2)] == [e.event_id for e in seen]
    assert _drain(sub, _quiet(reg)) == []
    sub.close()


def test_two_groups_each_see_every_event(any_reg: mt.Registry) -> None:
    reg = any_reg
    _versions(reg, "m", 2)
    reg.set_alias("m:v0", "production")
    reg.set_alias("m:v1", "production")
    a = reg.subscribe("ci", alias="production")
    b = reg.subscribe("deployer", alias="production")
    seen_a, seen_b = _take(a, 2), _take(b, 2)
    a.commit()
    assert [e.event_id for e in seen_a] == [e.event_id for e in seen_b]
    assert _drain(a, _quiet(reg)) == _drain(b, _quiet(reg)) == []
    everything = reg.subscribe("everything")
    every = [e.event_id for e in reg.events()]
    assert [e.event_id for e in _take(everything, len(every))] == every
    for sub in (a, b, everything):
        sub.close()


def test_the_filters_pick_alias_moves_of_one_owner(any_reg: mt.Registry) -> None:
    reg = any_reg
    _versions(reg, "m", 2)
    _versions(reg, "other", 1)
    reg.set_alias("m:v0", "production")
    reg.set_alias("other:v0", "production")
    reg.set_alias("m:v1", "staging")
    reg.link("m:v1", "classifier", aliases=["production"])
    reg.remove_alias("m", "production")

    def received(
        group: str,
        count: int,
        *,
        model: str | None = None,
        alias: str | None = None,
        types: list[str] | None = None,
    ) -> list[Event]:
        sub = reg.subscribe(group, model=model, alias=alias, types=types)
        try:
            found = _take(sub, count)
            assert _drain(sub, _quiet(reg)) == []
            return found
        finally:
            sub.close()

    assert _moves(received("a", 2, model="m", alias="production")[:1]) == [("m", "production", 0)]
    removal = received("b", 2, model="team/m", alias="production")[-1]
    assert removal.type == "AliasRemoved"
    only_moves = received("c", 1, model="m", types=["AliasMoved"], alias="production")
    assert [e.type for e in only_moves] == ["AliasMoved"]
    registered = received("d", 1, model="classifier", alias="production")
    assert _moves(registered) == [("classifier", "production", 1)]
    any_owner = received("e", 4, alias="production")
    assert [e.data["owner"] for e in any_owner] == ["m", "other", "classifier", "m"]
    of_model = received("f", 6, model="m")
    assert {e.stream for e in of_model} == {"model:team/m"}
    assert "VersionLogged" in {e.type for e in of_model}


def test_a_blocked_subscription_receives_an_event_as_it_lands(any_reg: mt.Registry) -> None:
    reg = any_reg
    _versions(reg, "m", 1)
    sub = reg.subscribe("deploy", alias="production", start="latest")
    assert sub.poll(_quiet(reg)) is None
    mover = threading.Timer(0.1, lambda: reg.set_alias("m:v0", "production"))
    mover.start()
    try:
        event = sub.poll(WAIT)
    finally:
        mover.join()
    assert event is not None
    assert _moves([event]) == [("m", "production", 0)]
    sub.close()


def test_iteration_stops_after_its_timeout_and_close_ends_a_blocked_poll(
    any_reg: mt.Registry,
) -> None:
    reg = any_reg
    sub = reg.subscribe("idle", timeout=_quiet(reg))
    assert list(sub) == []
    sub.close()
    close_ends_a_blocked_poll(reg.subscribe("blocked"))


def test_a_new_group_from_latest_skips_history_but_keeps_its_place(any_reg: mt.Registry) -> None:
    reg = any_reg
    _versions(reg, "m", 3)
    reg.set_alias("m:v0", "production")
    sub = reg.subscribe("late", alias="production", start="latest")
    sub.close()  # never committed anything
    reg.set_alias("m:v1", "production")
    again = reg.subscribe("late", alias="production", start="latest")
    assert _moves(_take(again, 1)) == [("m", "production", 1)]
    assert _drain(again, _quiet(reg)) == []
    again.close()


# -- the SQL cursor -------------------------------------------------------------------------


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


def test_a_consumer_commits_every_n_handled_events_and_once_nothing_is_buffered(
    reg: mt.Registry,
) -> None:
    _versions(reg, "m", 25)
    sub = reg.subscribe("counter", types=["VersionLogged"])
    handled: list[int] = []
    commits: list[int] = []
    commit = sub.commit

    def counted() -> None:
        commit()
        commits.append(len(handled))

    def handle(event: Event) -> bool:
        handled.append(event.position)
        return True

    sub.commit = counted  # type: ignore[method-assign]
    consumer = ExecConsumer(sub, handle=handle, commit_every=10, commit_s=3600)
    assert consumer.run(idle_timeout=0.05) == 0
    assert (len(handled), commits) == (25, [10, 20, 25])
    assert _drain(reg.subscribe("counter")) == []
