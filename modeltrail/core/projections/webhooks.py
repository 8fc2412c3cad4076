"""Webhooks: the endpoints, and what was delivered to each.

A webhook's ``done_through`` is the position of the last event it was sent (or given up
on); the sender resumes after it. It moves only by ``WebhookDelivered`` and by a
``WebhookFailed`` that gives up, so the delivery record and the sender's place are one
event: there is no moment when one is written and the other is not.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from modeltrail.core.events.envelope import Event
from modeltrail.core.projections.fold import Projection, dumps
from modeltrail.core.projections.state import Spec, State
from modeltrail.errors import AlreadyExists, NotFound

Data = dict[str, Any]
WEBHOOK_TYPES = frozenset({"WebhookAdded", "WebhookRemoved", "WebhookDelivered", "WebhookFailed"})
"""Events about webhooks, never themselves sent to one (each delivery would beget another)."""


class WebhookRow(NamedTuple):
    webhook_id: str
    namespace: str
    url: str
    alias: str | None
    owner_namespace: str | None
    owner: str | None
    types: str
    secret_id: str
    active: int
    created_at: int
    created_by: str
    since: int
    done_through: int
    delivered: int
    failed: int
    retry_event_id: str | None
    retry_attempts: int
    removed_reason: str | None


class WebhookDeliveryRow(NamedTuple):
    webhook_id: str
    event_id: str
    position: int
    event_type: str
    outcome: str
    status: int | None
    attempts: int
    at: int


WEBHOOKS = Spec("webhooks", WebhookRow, ("webhook_id",), (("namespace",),))
WEBHOOK_DELIVERIES = Spec(
    "webhook_deliveries",
    WebhookDeliveryRow,
    ("webhook_id", "event_id"),
    (("webhook_id", "position"),),
)


def webhook_added(state: State, e: Event, d: Data) -> None:
    if state.get(WEBHOOKS, (d["webhook_id"],)) is not None:
        raise AlreadyExists(f"webhook {d['webhook_id']!r} already exists")
    state.put(
        WEBHOOKS,
        WebhookRow(
            d["webhook_id"],
            e.namespace,
            d["url"],
            d["alias"],
            d["owner_namespace"],
            d["owner"],
            dumps(sorted(d["types"])),
            d["secret_id"],
            1,
            e.recorded_at,
            e.actor,
            e.position,
            e.position,
            0,
            0,
            None,
            0,
            None,
        ),
    )


def webhook_removed(state: State, e: Event, d: Data) -> None:
    hook = _webhook(state, d["webhook_id"])
    if not hook.active:
        raise NotFound(f"webhook {hook.webhook_id!r} was removed already")
    state.put(WEBHOOKS, hook._replace(active=0, removed_reason=d["reason"]))


def webhook_delivered(state: State, e: Event, d: Data) -> None:
    hook = _webhook(state, d["webhook_id"])
    _record(state, e, d, hook, "delivered", d["status"], d["attempts"])
    state.put(
        WEBHOOKS,
        hook._replace(
            done_through=max(hook.done_through, d["position"]),
            delivered=hook.delivered + 1,
            retry_event_id=None,
            retry_attempts=0,
        ),
    )


def webhook_failed(state: State, e: Event, d: Data) -> None:
    hook = _webhook(state, d["webhook_id"])
    if d["gave_up"]:
        _record(state, e, d, hook, "gave_up", d["status"], d["attempt"])
        hook = hook._replace(
            done_through=max(hook.done_through, d["position"]),
            retry_event_id=None,
            retry_attempts=0,
        )
    else:
        hook = hook._replace(retry_event_id=d["event_id"], retry_attempts=d["attempt"])
    state.put(WEBHOOKS, hook._replace(failed=hook.failed + 1))


def _record(
    state: State,
    e: Event,
    d: Data,
    hook: WebhookRow,
    outcome: str,
    status: int | None,
    attempts: int,
) -> None:
    key = (hook.webhook_id, d["event_id"])
    if state.get(WEBHOOK_DELIVERIES, key) is not None:
        raise AlreadyExists(
            f"event {d['event_id']} was already delivered to webhook {hook.webhook_id!r} (or "
            "given up on): each event goes to an endpoint once"
        )
    state.put(
        WEBHOOK_DELIVERIES,
        WebhookDeliveryRow(
            *key, d["position"], d["event_type"], outcome, status, attempts, e.recorded_at
        ),
    )


def _webhook(state: State, webhook_id: str) -> WebhookRow:
    row: WebhookRow | None = state.get(WEBHOOKS, (webhook_id,))
    if row is None:
        raise NotFound(f"webhook {webhook_id!r} does not exist")
    return row


WEBHOOK_PROJECTION = Projection(
    "webhooks",
    (WEBHOOKS, WEBHOOK_DELIVERIES),
    {
        "WebhookAdded": webhook_added,
        "WebhookRemoved": webhook_removed,
        "WebhookDelivered": webhook_delivered,
        "WebhookFailed": webhook_failed,
    },
)
