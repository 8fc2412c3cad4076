"""Webhooks against a real HTTP server on 127.0.0.1: signed, retried, never sent twice."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

import modeltrail as mt
from modeltrail.consumers import subscriptions
from modeltrail.consumers.webhooks import (
    Answer,
    Backoff,
    Webhooks,
    WebhookSender,
    http_post,
    new_secret,
    secret_key,
    sign,
)
from modeltrail.core.events.kafka_log import position_of
from modeltrail.errors import InvalidInput, InvalidName, NotFound, ProjectionTimeout
from tests.helpers import Endpoint, verify

FAST = Backoff(base_s=0.01, factor=2.0, max_s=0.05, jitter=0.0)


def _sender(reg: mt.Registry, **options: Any) -> WebhookSender:
    return WebhookSender(reg, backoff=options.pop("backoff", FAST), poll_s=0.01, **options)


def _model(reg: mt.Registry, n: int = 2) -> None:
    for i in range(n):
        reg.log_version("m", {"w": f"m-{i}".encode()})


def test_the_signature_matches_the_specifications_example() -> None:
    # the example of the Standard Webhooks reference libraries' tests
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_delivery_is_signed_and_verifiable_with_the_secret(
    reg: mt.Registry, endpoint: Endpoint
) -> None:
    _model(reg)
    hook, secret = Webhooks(reg).add(endpoint.url, alias="production", model="m")
    reg.set_alias("m:v1", "production")
    _sender(reg).run(idle_timeout=0.1)

    [request] = endpoint.received
    document = verify(secret, request.headers, request.body)
    moved = reg.audit(types=["AliasMoved"])[-1]
    assert request.headers["webhook-id"] == str(moved.event_id)
    assert request.headers["content-type"] == "application/json"
    assert document["type"] == "AliasMoved"
    assert document["data"]["data"]["to_index"] == 1
    assert document["data"]["event_id"] == str(moved.event_id)
    with pytest.raises(AssertionError):
        verify(new_secret(), request.headers, request.body)
    [delivered] = reg.audit(types=["WebhookDelivered"])
    assert delivered.data["event_id"] == str(moved.event_id)
    assert (delivered.data["status"], delivered.data["attempts"]) == (200, 1)
    assert Webhooks(reg).get(hook.webhook_id).delivered == 1


def test_failures_are_retried_with_backoff_and_recorded(
    reg: mt.Registry, endpoint: Endpoint
) -> None:
    _model(reg)
    hook, secret = Webhooks(reg).add(endpoint.url, alias="production")
    endpoint.statuses = [500, 503]
    reg.set_alias("m:v0", "production")
    _sender(reg).run(idle_timeout=0.1)

    assert len(endpoint.received) == 3
    assert len(set(endpoint.ids)) == 1  # one event, one id, three attempts
    for request in endpoint.received:
        verify(secret, request.headers, request.body)
    failed = reg.audit(types=["WebhookFailed"])
    assert [(f.data["attempt"], f.data["status"], f.data["gave_up"]) for f in failed] == [
        (1, 500, False),
        (2, 503, False),
    ]
    assert all(f.data["retry_in_s"] > 0 for f in failed)
    [delivered] = reg.audit(types=["WebhookDelivered"])
    assert delivered.data["attempts"] == 3
    assert Webhooks(reg).get(hook.webhook_id).failed == 2


def test_a_restarted_sender_never_sends_a_delivered_event_again(
    reg: mt.Registry, endpoint: Endpoint
) -> None:
    _model(reg, 3)
    Webhooks(reg).add(endpoint.url, alias="production")
    reg.set_alias("m:v0", "production")
    _sender(reg).run(idle_timeout=0.1)
    assert len(endpoint.received) == 1

    _sender(reg).run(idle_timeout=0.1)  # a new process: nothing is sent again
    assert len(endpoint.received) == 1

    reg.set_alias("m:v1", "production")
    endpoint.statuses = [500]
    first = _sender(reg, backoff=Backoff(base_s=60, jitter=0))
    assert first.step()  # fails once, then the process stops while the retry waits
    reg.set_alias("m:v2", "production")
    _sender(reg).run(idle_timeout=0.1)
    assert len(endpoint.ids) == 4
    assert len(set(endpoint.ids)) == 3
    moves = [str(e.event_id) for e in reg.audit(types=["AliasMoved"])]
    assert endpoint.ids == [moves[0], moves[1], moves[1], moves[2]]
    attempts = [e.data["attempts"] for e in reg.audit(types=["WebhookDelivered"])]
    assert attempts == [1, 2, 1]  # the restarted sender went on counting from the log


def test_a_crash_between_answer_and_record_sends_once_more_with_the_same_id(
    reg: mt.Registry, endpoint: Endpoint
) -> None:
    _model(reg)
    Webhooks(reg).add(endpoint.url, alias="production")
    reg.set_alias("m:v0", "production")

    class Crash(BaseException):
        pass

    def post_then_die(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Answer:
        http_post(url, body, headers, timeout)
        raise Crash

    with pytest.raises(Crash):
        _sender(reg, post=post_then_die).step()
    _sender(reg).run(idle_timeout=0.1)
    assert len(endpoint.ids) == 2
    assert endpoint.ids[0] == endpoint.ids[1]  # the receiver's idempotency key
    assert len(reg.audit(types=["WebhookDelivered"])) == 1


def test_after_max_attempts_the_sender_gives_up_and_goes_on(
    reg: mt.Registry, endpoint: Endpoint
) -> None:
    _model(reg)
    Webhooks(reg).add(endpoint.url, alias="production")
    endpoint.statuses = [500, 500]
    reg.set_alias("m:v0", "production")
    reg.set_alias("m:v1", "production")
    _sender(reg, max_attempts=2).run(idle_timeout=0.1)
    moves = [str(e.event_id) for e in reg.audit(types=["AliasMoved"])]
    assert endpoint.ids == [moves[0], moves[0], moves[1]]
    assert [f.data["gave_up"] for f in reg.audit(types=["WebhookFailed"])] == [False, True]
    assert [e.data["event_id"] for e in reg.audit(types=["WebhookDelivered"])] == [moves[1]]


def test_an_endpoint_that_answers_410_is_removed(reg: mt.Registry, endpoint: Endpoint) -> None:
    _model(reg)
    hook, _ = Webhooks(reg).add(endpoint.url)
    endpoint.statuses = [410]
    reg.set_alias("m:v0", "production")
    _sender(reg).run(idle_timeout=0.1)
    assert len(endpoint.received) == 1
    assert not Webhooks(reg).get(hook.webhook_id).active
    [removed] = reg.audit(types=["WebhookRemoved"])
    assert "410" in removed.data["reason"]


def test_an_unreachable_endpoint_is_a_recorded_failure(reg: mt.Registry) -> None:
    _model(reg)
    Webhooks(reg).add("http://127.0.0.1:9/never", alias="production")
    reg.set_alias("m:v0", "production")
    _sender(reg, max_attempts=1, timeout_s=2.0).run(idle_timeout=0.1)
    [failed] = reg.audit(types=["WebhookFailed"])
    assert failed.data["status"] is None
    assert failed.data["error"]
    assert failed.data["gave_up"]


def test_a_webhook_gets_only_its_events_and_none_about_webhooks(
    reg: mt.Registry, endpoint: Endpoint
) -> None:
    _model(reg)
    reg.log_version("other", {"w": b"o"})
    every, _ = Webhooks(reg).add(endpoint.url)
    only, _ = Webhooks(reg).add(endpoint.url + "/prod", alias="production", model="m")
    reg.set_alias("other:v0", "production")
    reg.set_alias("m:v0", "staging")
    reg.set_alias("m:v1", "production")
    _sender(reg).run(idle_timeout=0.1)
    sent_types = [json.loads(r.body)["type"] for r in endpoint.received]
    assert not any(t.startswith("Webhook") for t in sent_types)
    assert sent_types.count("AliasMoved") == 4  # three to the first, one to the second
    assert Webhooks(reg).get(only.webhook_id).delivered == 1
    assert Webhooks(reg).get(every.webhook_id).delivered == 3


def test_the_secret_stays_out_of_the_log(reg: mt.Registry, endpoint: Endpoint) -> None:
    hook, secret = Webhooks(reg).add(endpoint.url, secret=new_secret())
    [added] = reg.audit(types=["WebhookAdded"])
    assert secret not in json.dumps(added.data)
    assert secret_key(secret).hex() not in json.dumps(added.data)
    assert added.data["secret_id"] == hook.secret_id
    assert Webhooks(reg).secret(hook.webhook_id) == secret
    reg.rebuild()
    assert reg.verify().ok
    assert Webhooks(reg).get(hook.webhook_id).url == endpoint.url


def test_bad_webhooks_are_refused_naming_the_rule(reg: mt.Registry) -> None:
    hooks = Webhooks(reg)
    with pytest.raises(InvalidInput, match="absolute http"):
        hooks.add("ftp://example.invalid/x")
    with pytest.raises(InvalidInput, match="whsec_"):
        hooks.add("http://127.0.0.1/x", secret="hunter2")
    with pytest.raises(InvalidInput, match="has 3 bytes"):
        hooks.add("http://127.0.0.1/x", secret="whsec_AAAA")
    with pytest.raises(InvalidInput, match="about webhooks themselves"):
        hooks.add("http://127.0.0.1/x", types=["WebhookDelivered"])
    with pytest.raises(NotFound):
        hooks.remove("nope")
    hook, _ = hooks.add("http://127.0.0.1/x")
    hooks.remove(hook.webhook_id)
    assert hooks.all() == []
    with pytest.raises(NotFound, match="removed already"):
        hooks.remove(hook.webhook_id)


@pytest.mark.parametrize(
    ("filters", "error", "rule"),
    [
        ({"types": ["AliasMovd"]}, InvalidInput, "AliasMovd is unknown"),
        ({"types": ["VersionLogged"], "alias": "production"}, InvalidInput, "only matches"),
        ({"model": "m:v1"}, InvalidName, "not a version"),
        ({"alias": "a b"}, InvalidName, "alias 'a b'"),
    ],
)
def test_webhooks_and_subscriptions_refuse_the_same_filters(
    reg: mt.Registry, filters: dict[str, Any], error: type[Exception], rule: str
) -> None:
    with pytest.raises(error, match=rule):
        Webhooks(reg).add("http://127.0.0.1/x", **filters)
    with pytest.raises(error, match=rule):
        reg.subscribe("g", **filters)


def test_a_sender_reads_on_through_events_a_webhook_is_not_sent_without_pausing(
    reg: mt.Registry, endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriptions, "_PAGE", 2)  # the log is read a few events at a time
    Webhooks(reg).add(endpoint.url, model="m", types=["VersionLogged"])
    for i in range(6):
        reg.log_version("other", {"w": f"o-{i}".encode()})
    reg.log_version("m", {"w": b"m"})
    sender = _sender(reg)
    while sender.step():  # busy while it reads on: its run loop does not wait in between
        pass
    assert [json.loads(r.body)["data"]["stream"] for r in endpoint.received] == ["model:team/m"]


def test_a_kafka_sender_waits_with_the_engines_await_position() -> None:
    waited: list[tuple[str, int]] = []

    class Kafka:
        def end_offsets(self, names: list[str]) -> dict[str, int]:
            return dict.fromkeys(names, 3)

    class Engine:
        kafka = Kafka()

        def await_position(self, partition: str, position: int) -> None:
            waited.append((partition, position))
            raise ProjectionTimeout("it is at offset 1")

    with pytest.raises(ProjectionTimeout, match=r"sender waits .*: it is at offset 1"):
        WebhookSender._await_projection(Engine(), "registry-0")  # type: ignore[arg-type]
    assert waited == [("registry-0", position_of(2, 0))]  # the partition's last record


def test_a_410_is_recorded_and_removes_the_webhook_in_one_write(
    reg: mt.Registry, endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    _model(reg)
    hook, _ = Webhooks(reg).add(endpoint.url)
    endpoint.statuses = [410]
    reg.set_alias("m:v0", "production")
    head, writes = reg.head(), []
    write = reg._write

    def counted(decide: Any) -> Any:
        writes.append(decide)
        return write(decide)

    monkeypatch.setattr(reg, "_write", counted)
    _sender(reg).step()
    assert len(writes) == 1
    assert [e.type for e in reg.events(after=head)] == ["WebhookFailed", "WebhookRemoved"]
    assert not Webhooks(reg).get(hook.webhook_id).active


def test_a_webhook_removed_by_hand_while_its_endpoint_answers_410_does_not_stop_the_sender(
    reg: mt.Registry, endpoint: Endpoint
) -> None:
    _model(reg)
    gone, _ = Webhooks(reg).add(endpoint.url + "/gone", alias="production")
    other, _ = Webhooks(reg).add(endpoint.url, alias="production")
    reg.set_alias("m:v0", "production")

    def remove_then_answer_410(
        url: str, body: bytes, headers: Mapping[str, str], timeout: float
    ) -> Answer:
        if url.endswith("/gone"):
            Webhooks(reg).remove(gone.webhook_id)  # `webhook rm` in another process
            return Answer(410)
        return http_post(url, body, headers, timeout)

    _sender(reg, post=remove_then_answer_410).run(idle_timeout=0.1)
    assert [r.data["reason"] for r in reg.audit(types=["WebhookRemoved"])] == ["removed by hand"]
    assert [f.data["gave_up"] for f in reg.audit(types=["WebhookFailed"])] == [True]
    assert Webhooks(reg).get(other.webhook_id).delivered == 1  # the sender went on


def test_the_sender_reads_a_webhooks_secret_once(
    reg: mt.Registry, endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    _model(reg)
    Webhooks(reg).add(endpoint.url, alias="production")
    endpoint.statuses = [500, 500]
    reg.set_alias("m:v0", "production")
    reg.set_alias("m:v1", "production")
    read: list[str] = []
    secret = Webhooks.secret

    def counted(webhooks: Webhooks, webhook_id: str) -> str:
        read.append(webhook_id)
        return secret(webhooks, webhook_id)

    monkeypatch.setattr(Webhooks, "secret", counted)
    _sender(reg).run(idle_timeout=0.1)
    assert len(endpoint.received) == 4
    assert len(read) == 1
