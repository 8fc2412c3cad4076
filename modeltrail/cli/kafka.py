"""``modeltrail --kafka … project`` (a projector worker) and ``modeltrail kafka status``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from modeltrail.cli import _echo_json, _registry, _table, json_option, main
from modeltrail.errors import InvalidInput

if TYPE_CHECKING:
    from modeltrail.core.kafka_engine import KafkaEngine
    from modeltrail.registry import Registry


def _engine(registry: Registry) -> KafkaEngine:
    from modeltrail.core.kafka_engine import KafkaEngine

    engine = registry._require_engine()
    if not isinstance(engine, KafkaEngine):
        raise InvalidInput("this command needs a Kafka log: pass --kafka HOST:PORT")
    return engine


def run_projector(registry: Registry, group: str) -> None:
    """Runs one projector worker in the foreground until SIGINT or SIGTERM."""
    from modeltrail.consumers.projector import run_worker

    engine = _engine(registry)
    import logging  # here, not at the top: every other command would pay for it

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    click.echo(
        f"projecting {', '.join(engine.kafka.topics.values())} into {engine.database.url} "
        f"(group {group}); stop with Ctrl-C",
        err=True,
    )
    applied = run_worker(engine, group=group)
    click.echo(f"stopped after applying {applied:,} records", err=True)


@main.group()
def kafka() -> None:
    """The Kafka log and its projection."""


@kafka.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Per partition: records in Kafka, records projected, rejections."""
    from modeltrail.core.events.kafka_log import offset_of

    engine = _engine(_registry(ctx))
    ends = engine.kafka.end_offsets()
    done = engine.checkpoints()
    rejected: dict[str, int] = {
        str(p): int(n)
        for p, n in engine.database.reader().rows(
            "SELECT partition, COUNT(*) FROM rejections GROUP BY partition"
        )
    }
    rows: list[dict[str, str | int]] = []
    for name, end in ends.items():
        projected = offset_of(done[name]) + 1 if done.get(name) else 0
        rows.append(
            {
                "partition": name,
                "records": end,
                "projected": projected,
                "lag": end - projected,
                "rejected_events": rejected.get(name, 0),
            }
        )
    if as_json:
        _echo_json(rows)
        return
    _table(
        ["partition", "records", "projected", "lag", "rejected events"],
        [
            (r["partition"], r["records"], r["projected"], r["lag"], r["rejected_events"])
            for r in rows
        ],
    )
