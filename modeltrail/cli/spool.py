"""``modeltrail spool status|flush``: the writes trainers kept locally while the log was
unreachable (see ``modeltrail.producers.spool``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from modeltrail.cli import _echo_json, _registry, _table, _when, json_option, main

if TYPE_CHECKING:
    from modeltrail.producers.spool import Spool


def _spool(ctx: click.Context) -> Spool:
    from modeltrail.config import Settings
    from modeltrail.producers.spool import spool_of

    return spool_of(Settings.resolve(**ctx.obj))


@main.group()
def spool() -> None:
    """Writes kept locally while the log could not be reached."""


@spool.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show what waits in the spool (reads no database)."""
    found = _spool(ctx).status()
    if as_json:
        _echo_json(found)
        return
    _table(
        ["pending", "oldest", "newest", "in flight", "rejected", "spool"],
        [
            [
                found.pending,
                _when(found.oldest) if found.oldest else "-",
                _when(found.newest) if found.newest else "-",
                found.in_flight,
                found.rejected,
                found.path,
            ]
        ],
    )


@spool.command()
@json_option
@click.pass_context
def flush(ctx: click.Context, as_json: bool) -> None:
    """Write every pending entry to the log, in order."""
    report = _spool(ctx).flush(_registry(ctx))
    if as_json:
        _echo_json(report)
        return
    click.echo(f"flushed {report.flushed} entries; {report.rejected} rejected by a rule")
    if report.rejected:
        click.echo("rejected entries and their reasons are in rejected.jsonl beside the spool")
