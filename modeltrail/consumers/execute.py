"""Hands each event of a subscription to a handler: by default a shell command, run once
per event (``modeltrail subscribe --exec``).

The command gets the event as JSON on its standard input and as ``MODELTRAIL_*``
environment variables. Exit status 0 commits the event; anything else is retried after
an exponential backoff, so a deploy script that fails is run again until it succeeds
(or ``max_attempts`` is reached, when the consumer stops without committing, so that the
next start tries the same event first).

Stopping: ``stop()`` (the CLI calls it on SIGINT or SIGTERM) lets a running command
finish, commits it if it succeeded, and returns; a second ``stop()`` terminates the
command, which is then not committed. Either way nothing committed is lost and nothing
handled is skipped: at worst the event that was running is run again on the next start.
On Kafka, a commit the consumer group refuses (its partitions moved to another member
meanwhile) is logged, and the event is run again by whoever holds its partition next.

Any other ``handle(event) -> bool`` may take the command's place (``subscribe`` without
``--exec`` prints each event). Such a handler may let commits cover several events
(``commit_every``, ``commit_s``): the consumer then commits once the subscription has
nothing buffered, after that many events, or that many seconds after the first
uncommitted one, and always before it returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from modeltrail.consumers.subscriptions import ALIAS_TYPES, Subscription, event_document
from modeltrail.consumers.webhooks import Backoff
from modeltrail.core.events.envelope import Event, to_datetime
from modeltrail.errors import ConcurrencyConflict, InvalidInput, ModeltrailError

MAX_ENV_JSON = 100_000
"""Events whose JSON is longer go on standard input only (environments are small)."""


def event_environment(event: Event, group: str, attempt: int) -> dict[str, str]:
    """The ``MODELTRAIL_*`` variables a command is given for an event."""
    env = {
        "MODELTRAIL_GROUP": group,
        "MODELTRAIL_ATTEMPT": str(attempt),
        "MODELTRAIL_EVENT_ID": str(event.event_id),
        "MODELTRAIL_EVENT_TYPE": event.type,
        "MODELTRAIL_EVENT_POSITION": str(event.position),
        "MODELTRAIL_EVENT_STREAM": event.stream,
        "MODELTRAIL_EVENT_NAMESPACE": event.namespace,
        "MODELTRAIL_EVENT_ACTOR": event.actor,
        "MODELTRAIL_EVENT_RECORDED_AT": to_datetime(event.recorded_at).isoformat(),
    }
    if event.partition:  # Kafka: the position counts within this partition
        env["MODELTRAIL_EVENT_PARTITION"] = event.partition
    if event.type in ALIAS_TYPES:
        try:
            data = event.data
        except ModeltrailError:
            return env
        env["MODELTRAIL_ALIAS"] = data["alias"]
        env["MODELTRAIL_OWNER"] = f"{event.namespace}/{data['owner']}"
        env["MODELTRAIL_OWNER_KIND"] = data["owner_kind"]
        env["MODELTRAIL_FROM"] = _ref(data, "from")
        env["MODELTRAIL_TO"] = _ref(data, "to") if event.type == "AliasMoved" else ""
    return env


def _label(event: Event) -> str:
    label = f"position {event.position} {event.type} {event.stream}"
    return f"{event.partition} {label}" if event.partition else label


def _ref(data: dict[str, object], side: str) -> str:
    model = data.get(f"{side}_model")
    if model is None:
        return ""
    return f"{data[f'{side}_namespace']}/{model}:v{data[f'{side}_index']}"


Handler = Callable[[Event], bool]
"""Deals with one event: True when done with it (a commit may cover it), False to stop
without committing it."""


class ExecConsumer:
    """Hands each event of ``subscription`` to ``handle`` (default: runs ``command``) and
    commits what was handled; see the module docstring."""

    def __init__(
        self,
        subscription: Subscription,
        command: str | None = None,
        *,
        handle: Handler | None = None,
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
        log: Callable[[str], None] = lambda _line: None,
        poll_s: float = 0.2,
        commit_every: int = 1,
        commit_s: float = 0.0,
    ) -> None:
        if (command is None) == (handle is None):
            raise InvalidInput("an ExecConsumer runs a command or calls a handler: give one")
        if commit_every < 1:
            raise InvalidInput(f"commit_every {commit_every!r} is invalid: at least 1")
        self.subscription = subscription
        self.command = command
        self.handle: Handler = self._run_command if handle is None else handle
        self.backoff = backoff or Backoff(base_s=1.0, factor=2.0, max_s=60.0)
        self.max_attempts = max_attempts
        self.log = log
        self.poll_s = poll_s
        self.commit_every = commit_every
        self.commit_s = commit_s
        self.handled = 0
        self._uncommitted = 0
        self._uncommitted_since = 0.0
        self._stop = threading.Event()
        self._stops = 0
        self._child: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """First call: finish the running command, then return. Second: terminate it."""
        self._stops += 1
        self._stop.set()
        child = self._child
        if self._stops == 1 and self.command is not None:
            self.log("stopping: a running command may finish (a second signal terminates it)")
        if self._stops > 1 and child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)  # the shell and what it started

    def run(self, *, idle_timeout: float | None = None) -> int:
        """Handles events until stopped (0), idle for ``idle_timeout`` seconds (0), or the
        handler refused an event (1; the command: it failed ``max_attempts`` times)."""
        idle = 0.0
        try:
            while not self._stop.is_set():
                event = self.subscription.poll(self.poll_s)
                if event is None:
                    idle += self.poll_s
                    if idle_timeout is not None and idle >= idle_timeout:
                        return 0
                    continue
                idle = 0.0
                if not self.handle(event):
                    self._uncommitted = 0  # a commit now would cover the refused event
                    return 0 if self._stop.is_set() else 1
                self.handled += 1
                self._handled(event)
            return 0
        finally:
            if self._uncommitted:
                self._commit(None)

    def _handled(self, event: Event) -> None:
        """Commits now when due: see the module docstring."""
        now = time.monotonic()
        if not self._uncommitted:
            self._uncommitted_since = now
        self._uncommitted += 1
        if (
            self._uncommitted >= self.commit_every
            or not self.subscription.buffered
            or now - self._uncommitted_since >= self.commit_s
        ):
            self._commit(event)

    def _commit(self, event: Event | None) -> None:
        self._uncommitted = 0
        try:
            self.subscription.commit()
        except ConcurrencyConflict as exc:  # Kafka: the group's partitions moved
            where = "" if event is None else f"{_label(event)}: "
            self.log(f"{where}handled but not committed: {exc}")

    def _run_command(self, event: Event) -> bool:
        assert self.command is not None
        document = json.dumps(event_document(event), ensure_ascii=False)
        attempt = 0
        while True:
            attempt += 1
            env = {**os.environ, **event_environment(event, self.subscription.group, attempt)}
            if len(document) <= MAX_ENV_JSON:
                env["MODELTRAIL_EVENT_JSON"] = document
            status = self._run_child(self.command, document.encode() + b"\n", env)
            label = _label(event)
            if status == 0:
                self.log(f"{label}: done (attempt {attempt})")
                return True
            if self._stops > 1:
                self.log(f"{label}: command terminated; the event comes again on the next start")
                return False
            if self.max_attempts is not None and attempt >= self.max_attempts:
                self.log(
                    f"{label}: failed {attempt} times (exit status {status}); stopping without "
                    "committing it, so the next start runs it first"
                )
                return False
            if self._stop.is_set():
                self.log(f"{label}: failed (exit status {status}); stopped before retrying")
                return False
            delay = self.backoff.delay(attempt)
            self.log(f"{label}: failed (exit status {status}); retrying in {delay:.1f}s")
            if self._stop.wait(delay):
                return False

    def _run_child(self, command: str, stdin: bytes, env: dict[str, str]) -> int:
        # The command may be a pipeline: a shell runs it, as cron and CI runners do. In a
        # session of its own, so that a terminal's Ctrl-C reaches only this consumer,
        # which decides whether the command finishes or is terminated.
        self._child = subprocess.Popen(
            command, shell=True, stdin=subprocess.PIPE, env=env, start_new_session=True
        )
        try:
            self._child.communicate(stdin)
            return self._child.returncode
        finally:
            self._child = None
