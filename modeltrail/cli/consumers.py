"""Commands for consumers: subscribe, webhook, promotion, schedule."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from modeltrail.cli import _echo_json, _registry, _table, _when, json_option, main
from modeltrail.consumers.signals import on_signals

if TYPE_CHECKING:
    from modeltrail.core.events.envelope import Event


def _say(line: str) -> None:
    click.echo(f"modeltrail: {line}", err=True)


# -- subscribe ---------------------------------------------------------------------------


@main.command()
@click.option("--group", "-g", required=True, help="The subscription group (its place is kept).")
@click.option("--alias", help="Only moves and removals of this alias.")
@click.option("--model", help="Only events of this model or registered model ([ns/]name).")
@click.option("--type", "types", multiple=True, help="Only this event type (repeatable).")
@click.option("--exec", "command", help="Run this shell command once per event.")
@click.option(
    "--from",
    "start",
    type=click.Choice(["latest", "earliest"]),
    default="latest",
    show_default=True,
    help="Where a new group starts: new events only, or the whole log.",
)
@click.option("--max-attempts", type=int, help="Give up (exit 1) after this many failures.")
@click.option("--backoff", type=float, default=1.0, show_default=True, help="First retry delay.")
@click.option("--idle-timeout", type=float, help="Exit after this many seconds without events.")
@click.pass_context
def subscribe(
    ctx: click.Context,
    group: str,
    alias: str | None,
    model: str | None,
    types: tuple[str, ...],
    command: str | None,
    start: str,
    max_attempts: int | None,
    backoff: float,
    idle_timeout: float | None,
) -> None:
    """Follow the log as group GROUP: print each matching event as a JSON line, or run
    --exec's command with the event as JSON on stdin and MODELTRAIL_* variables.

    A restarted group goes on after the last event it handled; SIGINT or SIGTERM stop it
    cleanly (a running command is let finish; a second signal terminates it)."""
    from modeltrail.consumers.execute import ExecConsumer
    from modeltrail.consumers.webhooks import Backoff

    registry = _registry(ctx)
    sub = registry.subscribe(group, types=types or None, model=model, alias=alias, start=start)
    ctx.call_on_close(sub.close)
    if command is None:
        consumer = ExecConsumer(
            sub,
            handle=_print_event,
            log=_say,
            commit_every=PRINT_COMMIT_EVERY,
            commit_s=PRINT_COMMIT_S,
        )
        with on_signals(consumer.stop):
            consumer.run(idle_timeout=idle_timeout)
        return
    consumer = ExecConsumer(
        sub,
        command,
        backoff=Backoff(base_s=backoff, factor=2.0, max_s=max(60.0, backoff)),
        max_attempts=max_attempts,
        log=_say,
    )
    _say(f"group {group} {sub.place}: {sub.filter.describe()}")
    with on_signals(consumer.stop):
        status = consumer.run(idle_timeout=idle_timeout)
    _say(f"group {group} stopped, {sub.place} ({consumer.handled} handled)")
    sys.exit(status)


PRINT_COMMIT_EVERY = 1000
PRINT_COMMIT_S = 0.1
"""Printed events are committed together: once nothing more is buffered, or after this
many events or seconds (a commit is a write transaction, which trainers wait for)."""


def _print_event(event: Event) -> bool:
    from modeltrail.consumers.subscriptions import event_document

    click.echo(json.dumps(event_document(event), ensure_ascii=False))
    sys.stdout.flush()
    return True


# -- webhooks ----------------------------------------------------------------------------


@main.group()
def webhook() -> None:
    """Add, list, remove and run webhooks (signed the Standard Webhooks way)."""


@webhook.command("add")
@click.argument("url")
@click.option("--alias", help="Only moves and removals of this alias.")
@click.option("--model", help="Only events of this model or registered model.")
@click.option("--type", "types", multiple=True, help="Only this event type (repeatable).")
@click.option("--secret", help="whsec_<base64> signing secret [a new one].")
@json_option
@click.pass_context
def webhook_add(
    ctx: click.Context,
    url: str,
    alias: str | None,
    model: str | None,
    types: tuple[str, ...],
    secret: str | None,
    as_json: bool,
) -> None:
    """Send URL every matching event from now on."""
    from modeltrail.consumers.webhooks import Webhooks

    hook, chosen = Webhooks(_registry(ctx)).add(
        url, secret=secret, alias=alias, model=model, types=types or None
    )
    if as_json:
        _echo_json({"webhook": hook, "secret": chosen if secret is None else None})
        return
    click.echo(f"webhook {hook.webhook_id} -> {hook.url}")
    if secret is None:
        click.echo(f"secret {chosen}  (keep it: receivers verify signatures with it)")


@webhook.command("list")
@click.option("--all", "include_removed", is_flag=True, help="Include removed webhooks.")
@json_option
@click.pass_context
def webhook_list(ctx: click.Context, include_removed: bool, as_json: bool) -> None:
    """List webhooks and how their deliveries stand."""
    from modeltrail.consumers.webhooks import Webhooks

    registry = _registry(ctx)
    found = Webhooks(registry).all(include_removed=include_removed)
    # over Kafka a webhook's place is its consumer group's offsets, one per partition
    on_kafka = registry.settings.kafka is not None
    if as_json:
        _echo_json(found)
        return
    _table(
        ["webhook", "url", "filter", "delivered", "failed", "after", "active"],
        [
            (
                h.webhook_id,
                h.url,
                h.filter.describe(),
                h.delivered,
                h.failed,
                "-" if on_kafka else h.done_through,
                "yes" if h.active else "no",
            )
            for h in found
        ],
    )


@webhook.command("rm")
@click.argument("webhook_id")
@click.pass_context
def webhook_rm(ctx: click.Context, webhook_id: str) -> None:
    """Stop sending to a webhook."""
    from modeltrail.consumers.webhooks import Webhooks

    Webhooks(_registry(ctx)).remove(webhook_id)
    click.echo(f"removed webhook {webhook_id}")


@webhook.command("deliveries")
@click.argument("webhook_id")
@json_option
@click.pass_context
def webhook_deliveries(ctx: click.Context, webhook_id: str, as_json: bool) -> None:
    """Events delivered to (or given up on by) a webhook."""
    from modeltrail.consumers.webhooks import Webhooks
    from modeltrail.core.events.envelope import to_datetime

    rows = Webhooks(_registry(ctx)).deliveries(webhook_id)
    if as_json:
        _echo_json([r._asdict() for r in rows])
        return
    _table(
        ["position", "event", "type", "outcome", "status", "attempts", "at"],
        [
            (
                r.position,
                r.event_id,
                r.event_type,
                r.outcome,
                r.status,
                r.attempts,
                _when(to_datetime(r.at)),
            )
            for r in rows
        ],
    )


@webhook.command("run")
@click.option("--max-attempts", type=int, default=10, show_default=True)
@click.option("--timeout", "timeout_s", type=float, default=15.0, show_default=True)
@click.option("--idle-timeout", type=float, help="Exit after this many idle seconds.")
@click.pass_context
def webhook_run(
    ctx: click.Context, max_attempts: int, timeout_s: float, idle_timeout: float | None
) -> None:
    """Send events to every webhook until SIGINT or SIGTERM."""
    from modeltrail.consumers.webhooks import WebhookSender

    sender = WebhookSender(_registry(ctx), max_attempts=max_attempts, timeout_s=timeout_s)
    stop = threading.Event()
    with on_signals(stop.set):
        sender.run(stop, idle_timeout=idle_timeout)
    _say("webhook sender stopped")


# -- promotion rules ---------------------------------------------------------------------


@main.group()
def promotion() -> None:
    """Promotion rules: stages in order and protected aliases."""


def _aliases(text: str | None) -> list[str]:
    return [a.strip() for a in (text or "").split(",") if a.strip()]


@promotion.command("set")
@click.argument("ref")
@click.option("--stages", help="Aliases in promotion order, comma-separated (staging,production).")
@click.option("--protect", "protected", multiple=True, help="A protected alias (repeatable).")
@click.pass_context
def promotion_set(
    ctx: click.Context, ref: str, stages: str | None, protected: tuple[str, ...]
) -> None:
    """Set the promotion rules of REF (a model or registered model); none lifts them."""
    rules = _registry(ctx).set_promotion_rules(
        ref, stages=_aliases(stages), protected=[a for p in protected for a in _aliases(p)]
    )
    click.echo(_describe(rules))


@promotion.command("show")
@click.argument("ref")
@json_option
@click.pass_context
def promotion_show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Show the promotion rules of REF."""
    rules = _registry(ctx).promotion_rules(ref)
    if as_json:
        _echo_json(rules)
        return
    click.echo(_describe(rules))


def _describe(rules: Any) -> str:
    stages = " → ".join(rules.stages) or "-"
    return f"{rules.owner}: stages {stages}  protected {', '.join(rules.protected) or '-'}"


# -- schedules ---------------------------------------------------------------------------


@main.group()
def schedule() -> None:
    """Scheduled jobs: retention, promotion policies, snapshots."""


@schedule.command("run")
@click.option("--config", "config_path", type=click.Path(exists=True), required=True)
@click.option("--once", is_flag=True, help="Run every job once, now, and exit.")
@click.pass_context
def schedule_run(ctx: click.Context, config_path: str, once: bool) -> None:
    """Run the jobs of a TOML config file on their schedules until SIGINT or SIGTERM."""
    from modeltrail.consumers.schedule import load_config, run_blocking, run_once

    registry = _registry(ctx)
    config = load_config(Path(config_path))
    if once:
        for name, result in run_once(registry, config):
            click.echo(f"{name}: {result}")
        return
    stop = threading.Event()
    with on_signals(stop.set):
        run_blocking(registry, config, stop, log=_say)
    _say("scheduler stopped")
