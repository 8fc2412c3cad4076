"""Webhooks: registered as events, sent signed the Standard Webhooks way, retried with backoff.

Each delivery is an HTTP POST of the event as JSON with the headers of the Standard
Webhooks specification, so its verifier libraries accept it:

- ``webhook-id``: the event id (the same on every retry: the receiver's idempotency key);
- ``webhook-timestamp``: the attempt's time, integer Unix seconds;
- ``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256 of ``id.timestamp.body``,
  keyed with the secret, which is written ``whsec_<base64 of 24 to 64 random bytes>``.

The registration (URL, filter, a fingerprint of the secret) is a ``WebhookAdded`` event.
The secret itself is kept in ``webhook_secrets``, a table beside the log: the log is
immutable and shown to every auditor, so a secret written into it could never be taken
back.

Delivery and its record. The sender sends a webhook's events in log order, one at a time.
A 2xx answer is recorded as ``WebhookDelivered``; that event also moves the webhook's
place (``done_through`` in the ``webhooks`` projection), so recording the delivery and
advancing past it are one commit. A sender that stops, or is restarted, never sends a
recorded event again. One window remains, as in every at-least-once sender: if the
process dies after the endpoint answered and before that commit (a few milliseconds),
the event is sent again after the restart, with the same ``webhook-id``, which is why
the receiver should treat the id as an idempotency key.

A failed attempt (no answer, or a status other than 2xx) is recorded as
``WebhookFailed`` and retried after an exponential backoff with jitter (``Retry-After``
is honoured); after ``max_attempts`` the sender gives up on that event (recorded, with
``gave_up``) and goes on. ``410 Gone`` removes the webhook. Redirects are failures, as
the specification recommends. Run one sender per registry: two would both send.

Over Kafka, positions count per partition, so one ``done_through`` cannot be the place.
There each webhook follows the log as a consumer group of its own
(``<prefix>.webhook.<id>``, see ``consumers/kafka_feed.py``), starting with what was
appended from its registration's moment on; it sends only events the projection
accepted, in log order per partition, one at a time. The group's commit follows the
delivery record, and ``webhook_deliveries`` (keyed by webhook and event id) is the guard:
an event handed out again (a crash between the record and the commit, partitions moving)
is passed over when its delivery is recorded. Before a webhook's first send the sender
waits until the projection has applied every record of the webhook's own partition (where
its delivery records go), so that a record appended just before a restart is seen. The
window left is the same as on the SQL log: a crash between the endpoint's answer and the
record.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import random
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from modeltrail.consumers.subscriptions import EventFilter, SqlFeed, Subscription, event_document
from modeltrail.core import commands as cmd
from modeltrail.core.batch import Batch
from modeltrail.core.db import Database
from modeltrail.core.events.envelope import Event, to_datetime
from modeltrail.core.events.kafka_log import position_of
from modeltrail.core.events.sql_log import SqlLog
from modeltrail.core.projections.state import read_all
from modeltrail.core.projections.webhooks import (
    WEBHOOK_DELIVERIES,
    WEBHOOK_TYPES,
    WEBHOOKS,
    WebhookDeliveryRow,
    WebhookRow,
)
from modeltrail.core.readmodel import ReadModel
from modeltrail.core.sidetables import ensure_table
from modeltrail.errors import (
    AlreadyExists,
    ConcurrencyConflict,
    InvalidInput,
    LogUnavailable,
    NotFound,
    ProjectionTimeout,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

    from modeltrail.core.kafka_engine import KafkaEngine
    from modeltrail.registry import Registry

SECRET_PREFIX = "whsec_"
SECRETS_TABLE = "webhook_secrets"


# -- signing ------------------------------------------------------------------------------


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key a ``whsec_<base64>`` secret stands for."""
    rule = f"secrets are {SECRET_PREFIX}<base64 of 24 to 64 random bytes>"
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise InvalidInput(f"webhook secret is invalid: {rule}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"webhook secret is invalid: it is not base64; {rule}") from None
    if not 24 <= len(key) <= 64:
        raise InvalidInput(f"webhook secret is invalid: its key has {len(key)} bytes; {rule}")
    return key


def secret_id(secret: str) -> str:
    return hashlib.sha256(secret_key(secret)).hexdigest()[:16]


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def body_of(event: Event) -> bytes:
    """The JSON body a webhook is sent for an event (``type``, ``timestamp``, ``data``)."""
    document = {
        "type": event.type,
        "timestamp": to_datetime(event.recorded_at).isoformat().replace("+00:00", "Z"),
        "data": event_document(event),
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def signed_headers(secret: str, event: Event, body: bytes, now_s: int) -> dict[str, str]:
    message_id = str(event.event_id)
    return {
        "content-type": "application/json",
        "user-agent": "modeltrail-webhooks",
        "webhook-id": message_id,
        "webhook-timestamp": str(now_s),
        "webhook-signature": sign(secret, message_id, now_s, body),
    }


# -- registration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Webhook:
    """A registered webhook and where its deliveries stand."""

    webhook_id: str
    namespace: str
    url: str
    alias: str | None
    owner: str | None
    types: tuple[str, ...]
    secret_id: str
    active: bool
    delivered: int
    failed: int
    done_through: int
    actor: str

    @property
    def filter(self) -> EventFilter:
        """Which events the webhook is sent."""
        owner = None
        if self.owner is not None:
            namespace, _, name = self.owner.partition("/")
            owner = (namespace, name)
        return EventFilter(frozenset(self.types) or None, owner, self.alias, WEBHOOK_TYPES)

    @classmethod
    def from_row(cls, row: WebhookRow) -> Webhook:
        return cls(
            row.webhook_id,
            row.namespace,
            row.url,
            row.alias,
            None if row.owner is None else f"{row.owner_namespace}/{row.owner}",
            tuple(json.loads(row.types)),
            row.secret_id,
            bool(row.active),
            row.delivered,
            row.failed,
            row.done_through,
            row.created_by,
        )


def define_secrets_table(metadata: sa.MetaData) -> sa.Table:
    import sqlalchemy as sa

    return sa.Table(
        SECRETS_TABLE,
        metadata,
        sa.Column("webhook_id", sa.String(64), primary_key=True),
        sa.Column("secret", sa.Text, nullable=False),
    )


class Webhooks:
    """Adds, lists and removes the webhooks of a registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.database: Database = registry._require_engine().database
        ensure_table(self.database, define_secrets_table)

    def add(
        self,
        url: str,
        *,
        secret: str | None = None,
        alias: str | None = None,
        model: str | None = None,
        types: Iterable[str] | None = None,
    ) -> tuple[Webhook, str]:
        """Registers an endpoint; returns it and its secret (a new one unless given)."""
        _check_url(url)
        secret = new_secret() if secret is None else secret
        fingerprint = secret_id(secret)
        where = self.registry._event_filter(types, model, alias)
        owner = where.owner
        if where.types is not None and where.types & WEBHOOK_TYPES:
            raise InvalidInput(
                f"types {sorted(where.types & WEBHOOK_TYPES)} are about webhooks themselves, "
                "which are never sent to one"
            )
        webhook_id = secrets.token_hex(8)
        namespace = self.registry.namespace if owner is None else owner[0]
        with self.database.transaction() as tx:  # the secret first: an orphan is harmless
            tx.run(
                f"INSERT INTO {SECRETS_TABLE} (webhook_id, secret) VALUES (?, ?)",
                (webhook_id, secret),
            )

        def decide(b: Batch) -> None:
            cmd.ensure_namespace(b, namespace)
            b.emit(
                "WebhookAdded",
                _stream(namespace, webhook_id),
                namespace,
                {
                    "webhook_id": webhook_id,
                    "url": url,
                    "alias": where.alias,
                    "owner_namespace": None if owner is None else owner[0],
                    "owner": None if owner is None else owner[1],
                    "types": sorted(where.types or ()),
                    "secret_id": fingerprint,
                },
            )

        self.registry._write(decide)
        return self.get(webhook_id), secret

    def remove(self, webhook_id: str, reason: str = "removed by hand") -> None:
        hook = self._row(webhook_id)
        _write_removal(self.registry, hook, reason)

    def get(self, webhook_id: str) -> Webhook:
        return Webhook.from_row(self._row(webhook_id))

    def all(self, *, include_removed: bool = False) -> list[Webhook]:
        rows = read_all(self.registry._read.query, WEBHOOKS)
        return [Webhook.from_row(r) for r in rows if include_removed or r.active]

    def deliveries(self, webhook_id: str) -> list[WebhookDeliveryRow]:
        self._row(webhook_id)
        rows = self.registry._read.where(
            WEBHOOK_DELIVERIES, order="position", webhook_id=webhook_id
        )
        return list(rows)

    def secret(self, webhook_id: str) -> str:
        row = self.database.reader().one(
            f"SELECT secret FROM {SECRETS_TABLE} WHERE webhook_id = ?", (webhook_id,)
        )
        if row is None:
            raise NotFound(f"webhook {webhook_id!r} has no secret in {SECRETS_TABLE}")
        return str(row[0])

    def _row(self, webhook_id: str) -> WebhookRow:
        row: WebhookRow | None = self.registry._read.get(WEBHOOKS, webhook_id)
        if row is None:
            raise NotFound(f"webhook {webhook_id!r} does not exist")
        return row


def _check_url(url: str) -> None:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(f"webhook URL {url!r} is invalid: use an absolute http(s) URL")


def _stream(namespace: str, webhook_id: str) -> str:
    return f"webhook:{namespace}/{webhook_id}"


def _write_removal(registry: Registry, hook: WebhookRow, reason: str) -> None:
    registry._write(lambda b: _emit_removal(b, hook, reason))


def _emit_removal(b: Batch, hook: WebhookRow, reason: str) -> None:
    b.emit(
        "WebhookRemoved",
        _stream(hook.namespace, hook.webhook_id),
        hook.namespace,
        {"webhook_id": hook.webhook_id, "reason": reason},
    )


# -- sending ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What an endpoint answered: a status (None when no answer came) and headers."""

    status: int | None
    headers: Mapping[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


Post = Callable[[str, bytes, Mapping[str, str], float], Answer]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx becomes an HTTPError: a failure, as the specification asks


_opener = urllib.request.build_opener(_NoRedirects)


def http_post(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Answer:
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with _opener.open(request, timeout=timeout_s) as response:
            response.read()
            return Answer(response.status, dict(response.headers))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, dict(exc.headers or {}), f"HTTP {exc.code} {exc.reason}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Answer(None, {}, f"{type(exc).__name__}: {reason}")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``base_s * factor**(attempt-1)``, capped, with ± jitter."""

    base_s: float = 5.0
    factor: float = 4.0
    max_s: float = 6 * 3600.0
    jitter: float = 0.1

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        delay = min(self.max_s, self.base_s * self.factor ** max(attempt - 1, 0))
        delay *= 1 + random.uniform(-self.jitter, self.jitter)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_s))
        return max(delay, 0.0)


@dataclass
class _Progress:
    due_at: float = 0.0
    subscription: Subscription | None = None
    """The webhook's events: a feed from ``done_through`` on the SQL log, its consumer
    group on Kafka."""
    event: Event | None = None
    """The event being sent (handed out, not yet recorded)."""


class _DoneThrough:
    """A webhook's cursor on the SQL log: its place is the ``done_through`` of its row in
    the ``webhooks`` projection, which its delivery records move, so a save stores nothing
    (the ``WebhookDelivered`` or ``WebhookFailed`` event was the commit)."""

    def __init__(self, registry: Registry, webhook_id: str) -> None:
        self.registry = registry
        self.webhook_id = webhook_id

    def load(self, group: str) -> int:
        row: WebhookRow | None = self.registry._read.get(WEBHOOKS, self.webhook_id)
        return 0 if row is None else row.done_through

    def save(self, group: str, position: int, actor: str = "") -> None:
        pass


class WebhookSender:
    """Sends every active webhook its events, in log order; see the module's docstring."""

    def __init__(
        self,
        registry: Registry,
        *,
        post: Post = http_post,
        backoff: Backoff | None = None,
        max_attempts: int = 10,
        timeout_s: float = 15.0,
        poll_s: float = 0.05,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if max_attempts < 1:
            raise InvalidInput(f"max_attempts {max_attempts!r} is invalid: at least 1")
        self.registry = registry
        self.webhooks = Webhooks(registry)
        self.post = post
        self.backoff = backoff or Backoff()
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.wall_clock = wall_clock
        self.engine = registry._require_engine()
        if not isinstance(self.engine.log, SqlLog):
            from modeltrail.core.kafka_engine import KafkaEngine

            if not isinstance(self.engine, KafkaEngine):
                raise InvalidInput(
                    "the webhook sender follows a SQL or Kafka log; this registry's log is "
                    f"{type(self.engine.log).__name__}"
                )
        self._progress: dict[str, _Progress] = {}
        self._secrets: dict[str, str] = {}
        """Signing secrets by webhook id (a webhook's secret never changes)."""

    def run(
        self, stop: threading.Event | None = None, *, idle_timeout: float | None = None
    ) -> None:
        """Sends until ``stop`` is set, or until ``idle_timeout`` seconds pass with nothing
        to send and no retry pending."""
        stop = stop or threading.Event()
        idle_since = time.monotonic()
        try:
            while not stop.is_set():
                if self.step():
                    idle_since = time.monotonic()
                    continue
                if (
                    idle_timeout is not None
                    and not self.pending_retries()
                    and time.monotonic() - idle_since >= idle_timeout
                ):
                    return
                stop.wait(self._wait())
        finally:
            self.close()

    def close(self) -> None:
        """Leaves the webhooks' consumer groups (Kafka); what was handed out and not yet
        recorded comes again to the next sender."""
        for progress in self._progress.values():
            self._leave(progress)

    def step(self) -> bool:
        """One attempt for each webhook that has an event due; True when any was made, or
        when a webhook read on through events it is not sent (more may follow at once)."""
        busy = False
        active = self._active()
        ids = {hook.webhook_id for hook in active}
        for webhook_id in [w for w in self._progress if w not in ids]:
            self._leave(self._progress.pop(webhook_id))
        for hook in active:
            progress = self._progress.setdefault(hook.webhook_id, _Progress())
            if time.monotonic() < progress.due_at:
                continue
            fetched = 0 if progress.subscription is None else progress.subscription.fetched
            event = self._next_event(hook, progress)
            if event is not None:
                self._attempt(hook, event, progress)
                busy = True
            elif progress.subscription is not None and progress.subscription.fetched > fetched:
                busy = True
        return busy

    def pending_retries(self) -> bool:
        now = time.monotonic()
        return any(p.due_at > now for p in self._progress.values())

    def _wait(self) -> float:
        now = time.monotonic()
        due = [p.due_at - now for p in self._progress.values() if p.due_at > now]
        return max(min([self.poll_s, *due]), 0.001)

    def _active(self) -> list[WebhookRow]:
        rows: list[WebhookRow] = self.registry._read.where(WEBHOOKS, order="webhook_id", active=1)
        return rows

    def _secret(self, webhook_id: str) -> str:
        if webhook_id not in self._secrets:
            self._secrets[webhook_id] = self.webhooks.secret(webhook_id)
        return self._secrets[webhook_id]

    def _next_event(self, hook: WebhookRow, progress: _Progress) -> Event | None:
        if progress.event is None:
            if progress.subscription is None:
                progress.subscription = self._subscribe(hook)
            progress.event = progress.subscription.poll(0)
        return progress.event

    def _subscribe(self, hook: WebhookRow) -> Subscription:
        """The webhook's events: on the SQL log from its ``done_through``, on Kafka its
        consumer group, starting at its registration's moment."""
        where = _filter_of(hook)
        group = f"webhook-{hook.webhook_id}"
        if isinstance(self.engine.log, SqlLog):
            cursor = _DoneThrough(self.registry, hook.webhook_id)
            return Subscription(
                group, SqlFeed(self.engine.log, cursor, group, where.log_filter), where
            )
        from modeltrail.consumers.kafka_feed import KafkaFeed
        from modeltrail.core.kafka_engine import KafkaEngine

        engine = self.engine
        assert isinstance(engine, KafkaEngine)
        added = engine.database.reader().one(
            "SELECT partition, appended_at FROM log_events WHERE stream = ? "
            "AND stream_version = 0 AND status = 'accepted'",
            (_stream(hook.namespace, hook.webhook_id),),
        )
        if added is None:
            raise NotFound(
                f"webhook {hook.webhook_id!r} has no WebhookAdded event in the projection's "
                "mirror of the log: the projection is damaged; rebuild it"
            )
        self._await_projection(engine, str(added[0]))
        feed = KafkaFeed(
            engine,
            f"{engine.kafka.prefix}.webhook.{hook.webhook_id}",
            where.log_filter,
            start=int(added[1]),
        )
        return Subscription(group, feed, where)

    @staticmethod
    def _await_projection(engine: KafkaEngine, partition: str) -> None:
        """Waits until the projection has applied every record of ``partition`` appended
        so far: delivery records appended just before a restart are then seen."""
        end = engine.kafka.end_offsets([partition])[partition]
        if end == 0:
            return
        try:
            engine.await_position(partition, position_of(end - 1, 0))
        except ProjectionTimeout as exc:
            raise ProjectionTimeout(
                "the webhook sender waits for the projection to apply every delivery already "
                f"recorded: {exc}"
            ) from None

    def _leave(self, progress: _Progress) -> None:
        if progress.subscription is not None:
            progress.subscription.close()
        progress.subscription = progress.event = None

    def _passed(self, progress: _Progress) -> None:
        """The sender is done with the event in hand: sent, given up on, or recorded
        already."""
        progress.event, progress.due_at = None, 0.0
        if progress.subscription is not None:
            # Kafka: a refused commit (its partition moved) hands the event out again, and
            # its delivery record keeps it unsent
            with contextlib.suppress(ConcurrencyConflict):
                progress.subscription.commit()

    def _attempt(self, hook: WebhookRow, event: Event, progress: _Progress) -> None:
        event_id = str(event.event_id)
        if self.registry._read.get(WEBHOOK_DELIVERIES, hook.webhook_id, event_id) is not None:
            self._passed(progress)  # recorded already (by another sender, or before)
            return
        attempt = hook.retry_attempts + 1 if hook.retry_event_id == event_id else 1
        body = body_of(event)
        headers = signed_headers(self._secret(hook.webhook_id), event, body, int(self.wall_clock()))
        answer = self.post(hook.url, body, headers, self.timeout_s)
        if answer.ok:
            assert answer.status is not None
            self._record(
                hook,
                "WebhookDelivered",
                {
                    "webhook_id": hook.webhook_id,
                    "event_id": event_id,
                    "position": event.position,
                    "event_type": event.type,
                    "status": answer.status,
                    "attempts": attempt,
                },
            )
            self._passed(progress)
            return
        gone = answer.status == 410
        gave_up = gone or attempt >= self.max_attempts
        retry_in = None if gave_up else self.backoff.delay(attempt, _retry_after(answer))
        self._record(
            hook,
            "WebhookFailed",
            {
                "webhook_id": hook.webhook_id,
                "event_id": event_id,
                "position": event.position,
                "event_type": event.type,
                "attempt": attempt,
                "status": answer.status,
                "error": answer.error[:500],
                "retry_in_s": retry_in,
                "gave_up": gave_up,
            },
            removal="the endpoint answered 410 Gone" if gone else None,
        )
        if retry_in is None:
            self._passed(progress)
        else:
            progress.due_at = time.monotonic() + retry_in

    def _record(
        self, hook: WebhookRow, type_: str, data: dict[str, Any], *, removal: str | None = None
    ) -> None:
        """Records an attempt; with ``removal`` (the reason), removes the webhook in the same
        batch, unless it was removed already."""

        def decide(b: Batch) -> None:
            b.emit(type_, _stream(hook.namespace, hook.webhook_id), hook.namespace, data)
            if removal is not None:
                row: WebhookRow | None = ReadModel(b.query).get(WEBHOOKS, hook.webhook_id)
                if row is not None and row.active:
                    _emit_removal(b, hook, removal)

        waits = iter((0.05, 0.2, 1.0, 5.0))
        while True:
            try:
                self.registry._write(decide)
                return
            except AlreadyExists:
                return  # another sender recorded it first
            except NotFound:
                if removal is None:
                    raise
                # removed by hand between the check and the projection's verdict (Kafka):
                # the attempt is recorded on its own
                removal = None
            except LogUnavailable:
                wait = next(waits, None)
                if wait is None:
                    raise
                time.sleep(wait)


def _filter_of(hook: WebhookRow) -> EventFilter:
    """Which events a webhook is sent: its filter, and never an event about webhooks."""
    return Webhook.from_row(hook).filter


def _retry_after(answer: Answer) -> float | None:
    value = {k.lower(): v for k, v in answer.headers.items()}.get("retry-after")
    try:
        return None if value is None else float(value)
    except ValueError:
        return None
