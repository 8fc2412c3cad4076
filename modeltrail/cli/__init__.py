"""The ``modeltrail`` command: the SDK from the shell.

Listings print a table, or JSON with ``--json``. A refusal prints one line and exits
with status 2. Heavy modules (SQLAlchemy, rich's progress bars) load only in the
commands that use them, so a read such as ``modeltrail show m:production`` starts fast.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from modeltrail.errors import ModeltrailError

if TYPE_CHECKING:
    from modeltrail.core.events.envelope import Event
    from modeltrail.registry import Registry

F = TypeVar("F", bound=Callable[..., Any])


class _Group(click.Group):
    """Turns every ModeltrailError into one line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModeltrailError as exc:
            click.echo(f"modeltrail: {type(exc).__name__}: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.option("--home", envvar="MODELTRAIL_HOME", help="Embedded home directory [./.modeltrail].")
@click.option("--db", envvar="MODELTRAIL_DB", help="Database URL (overrides the home's SQLite).")
@click.option("--blobs", envvar="MODELTRAIL_BLOBS", help="Blob store directory.")
@click.option("--actor", envvar="MODELTRAIL_ACTOR", help="Who is acting [login name].")
@click.option("--namespace", "-n", envvar="MODELTRAIL_NAMESPACE", help="Default namespace.")
@click.option(
    "--durability",
    type=click.Choice(["normal", "full"]),
    envvar="MODELTRAIL_DURABILITY",
    help="SQLite synchronous level: normal (default) or full (fsync every commit).",
)
@click.option(
    "--kafka",
    envvar="MODELTRAIL_KAFKA",
    help="Kafka bootstrap HOST:PORT: the log is Kafka, --db the projection database.",
)
@click.option(
    "--kafka-prefix",
    envvar="MODELTRAIL_KAFKA_PREFIX",
    help="Topic name prefix on Kafka [modeltrail].",
)
@click.version_option(package_name="modeltrail")
@click.pass_context
def main(ctx: click.Context, /, **options: Any) -> None:
    """modeltrail: an event-sourced model registry with exact history."""
    ctx.obj = options


def _registry(ctx: click.Context) -> Registry:
    from modeltrail.registry import open as open_registry

    registry = open_registry(**ctx.obj)
    ctx.call_on_close(registry.close)
    return registry


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


# -- output ----------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.name.startswith("_")
        }
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return value


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(_plain(value), indent=2, ensure_ascii=False))


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*headers, box=None, header_style="bold", pad_edge=False)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console(soft_wrap=True).print(table)


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


@contextmanager
def _progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on a terminal; nothing when output is piped."""
    if not sys.stderr.isatty():
        yield lambda _n: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- models and versions ---------------------------------------------------------------


@main.command()
@click.option("--all-namespaces", "-A", is_flag=True, help="List every namespace.")
@json_option
@click.pass_context
def models(ctx: click.Context, all_namespaces: bool, as_json: bool) -> None:
    """List models."""
    registry = _registry(ctx)
    found = registry.models(None if all_namespaces else registry.namespace)
    if as_json:
        _echo_json(found)
        return
    _table(
        ["model", "versions", "aliases", "arch", "created", "by"],
        [
            (
                m.ref,
                m.version_count,
                " ".join(f"{a}:{v}" for a, v in m.aliases.items()),
                (m.arch_hash or "")[:12],
                _when(m.created_at),
                m.actor,
            )
            for m in found
        ],
    )


@main.command()
@click.argument("model")
@json_option
@click.pass_context
def versions(ctx: click.Context, model: str, as_json: bool) -> None:
    """List the versions of MODEL."""
    found = _registry(ctx).versions(model)
    if as_json:
        _echo_json(found)
        return
    _table(
        ["version", "aliases", "files", "bytes", "run", "epoch", "created", "by"],
        [
            (
                v.label,
                " ".join(v.aliases),
                len(v.files),
                v.size,
                v.run,
                v.epoch,
                _when(v.created_at),
                v.actor,
            )
            for v in found
        ],
    )


@main.command()
@click.argument("ref")
@json_option
@click.pass_context
def show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Show the version REF names ([namespace/]name[:version-or-alias])."""
    version = _registry(ctx).get(ref)
    if as_json:
        _echo_json(version)
        return
    click.echo(f"{version.ref}  aliases: {' '.join(version.aliases) or '-'}")
    click.echo(f"created {_when(version.created_at)} by {version.actor}  digest {version.digest}")
    if version.run:
        click.echo(f"run {version.run}  epoch {version.epoch}")
    if version.metadata:
        click.echo(f"metadata {json.dumps(version.metadata, sort_keys=True)}")
    if version.purged:
        click.echo("files purged by a retention policy")
    for entry in version.files:
        click.echo(f"  {entry.sha256[:12]}  {entry.size:>12,}  {entry.path}")


@main.command("log")
@click.argument("model")
@click.argument("path", type=click.Path(exists=True))
@click.option("--alias", "aliases", multiple=True, help="Alias to set on the version.")
@click.option("--metadata", "metadata_json", help="Metadata as a JSON object.")
@click.option("--run", help="The run that produced the version.")
@click.option("--epoch", type=int, help="The epoch the version was saved at.")
@click.pass_context
def log_version(
    ctx: click.Context,
    model: str,
    path: str,
    aliases: tuple[str, ...],
    metadata_json: str | None,
    run: str | None,
    epoch: int | None,
) -> None:
    """Upload PATH (a file or directory) as a new version of MODEL."""
    registry = _registry(ctx)
    try:
        metadata = json.loads(metadata_json) if metadata_json else None
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--metadata is not JSON: {exc}") from None
    from modeltrail.registry import collect_files

    total = sum(
        len(f) if isinstance(f, bytes) else Path(f).stat().st_size
        for f in collect_files(path).values()
    )
    with _progress("uploading", total) as advance:
        version = registry.log_version(
            model,
            path,
            metadata=metadata,
            aliases=aliases,
            run=run,
            epoch=epoch,
            progress=advance,
        )
    click.echo(version.ref)


@main.command()
@click.argument("ref")
@click.argument("dest", type=click.Path())
@click.pass_context
def download(ctx: click.Context, ref: str, dest: str) -> None:
    """Download the files of REF into DEST, verifying every sha256."""
    registry = _registry(ctx)
    version = registry.get(ref)
    with _progress("downloading", version.size) as advance:
        registry.download(ref, dest, progress=advance)
    click.echo(f"{version.ref} -> {dest} ({len(version.files)} files, {version.size:,} bytes)")


@main.command()
@click.argument("ref_a")
@click.argument("ref_b")
@json_option
@click.pass_context
def diff(ctx: click.Context, ref_a: str, ref_b: str, as_json: bool) -> None:
    """Compare the files and metadata of two versions."""
    result = _registry(ctx).diff(ref_a, ref_b)
    if as_json:
        _echo_json(result)
        return
    click.echo(f"{result.a} -> {result.b}")
    for sign, paths in (("+", result.added), ("-", result.removed), ("~", result.changed)):
        for p in paths:
            click.echo(f"{sign} {p}")
    for key, (old, new) in result.metadata.items():
        click.echo(f"~ metadata.{key}: {json.dumps(old)} -> {json.dumps(new)}")
    if result.same:
        click.echo("same files and metadata")


@main.command()
@click.argument("ref")
@json_option
@click.pass_context
def lineage(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Where a version came from and where it went."""
    result = _registry(ctx).lineage(ref)
    if as_json:
        _echo_json(result)
        return
    click.echo(result.version)
    click.echo(f"  produced by run: {result.run.ref if result.run else '-'}")
    for label, refs in (
        ("run inputs", result.inputs),
        ("derived from", result.derived_from),
        ("derivatives", result.derivatives),
        ("used by runs", result.consumers),
        ("linked into", result.registered),
    ):
        click.echo(f"  {label}: {', '.join(refs) or '-'}")


@main.command()
@click.argument("namespace")
@click.argument("max_models", required=False, type=int)
@click.pass_context
def quota(ctx: click.Context, namespace: str, max_models: int | None) -> None:
    """Set the model quota of NAMESPACE (omit MAX_MODELS to lift it)."""
    _registry(ctx).set_quota(namespace, max_models)
    click.echo(f"{namespace}: {'unlimited' if max_models is None else max_models} models")


# -- aliases and registered models -----------------------------------------------------


@main.group()
def alias() -> None:
    """Set, remove and trace aliases."""


@alias.command("set")
@click.argument("ref")
@click.argument("name")
@click.option("--expected", help="Only move if the alias is at this version now.")
@click.option("--force", is_flag=True, help="Move a protected alias (recorded as an override).")
@click.pass_context
def alias_set(ctx: click.Context, ref: str, name: str, expected: str | None, force: bool) -> None:
    """Point alias NAME at the version REF names."""
    registry = _registry(ctx)
    registry.set_alias(ref, name, expected=expected, force=force)
    click.echo(f"{name} -> {registry.get(ref).ref}")


@alias.command("rm")
@click.argument("model")
@click.argument("name")
@click.option("--force", is_flag=True, help="Remove a protected alias (recorded as an override).")
@click.pass_context
def alias_rm(ctx: click.Context, model: str, name: str, force: bool) -> None:
    """Remove alias NAME from MODEL (or a registered model)."""
    _registry(ctx).remove_alias(model, name, force=force)
    click.echo(f"removed {name}")


@alias.command("history")
@click.argument("model")
@click.argument("name")
@json_option
@click.pass_context
def alias_history(ctx: click.Context, model: str, name: str, as_json: bool) -> None:
    """Every move of alias NAME of MODEL, with who and when."""
    moves = _registry(ctx).alias_history(model, name)
    if as_json:
        _echo_json(moves)
        return
    _table(
        ["position", "at", "actor", "from", "to"],
        [
            (m.position, _when(m.at), m.actor, m.from_ref or "-", m.to_ref or "(removed)")
            for m in moves
        ],
    )


@main.command()
@click.argument("ref")
@click.argument("registered_name")
@click.option("--alias", "aliases", multiple=True, help="Alias to set in the registered model.")
@click.pass_context
def link(ctx: click.Context, ref: str, registered_name: str, aliases: tuple[str, ...]) -> None:
    """Link the version REF into REGISTERED_NAME (created when absent)."""
    registry = _registry(ctx)
    registry.link(ref, registered_name, aliases=aliases)
    click.echo(f"{registry.get(ref).ref} linked into {registered_name}")


@main.command()
@click.argument("ref")
@click.argument("registered_name")
@click.pass_context
def unlink(ctx: click.Context, ref: str, registered_name: str) -> None:
    """Unlink the version REF from REGISTERED_NAME."""
    _registry(ctx).unlink(ref, registered_name)
    click.echo(f"unlinked {ref} from {registered_name}")


@main.command()
@click.argument("name", required=False)
@json_option
@click.pass_context
def registered(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """List registered models, or show the links and aliases of NAME."""
    registry = _registry(ctx)
    if name is None:
        found = registry.registered_models(registry.namespace)
        if as_json:
            _echo_json(found)
            return
        _table(
            ["registered model", "aliases", "created", "by"],
            [
                (
                    r.ref,
                    " ".join(f"{a}:{t}" for a, t in r.aliases.items()),
                    _when(r.created_at),
                    r.actor,
                )
                for r in found
            ],
        )
        return
    model = registry.registered(name)
    links = model.links()
    if as_json:
        _echo_json({"registered": model, "links": links})
        return
    by_ref: dict[str, list[str]] = {}
    for alias_name, target in model.aliases.items():
        by_ref.setdefault(target, []).append(alias_name)
    _table(
        ["link", "version", "aliases", "linked", "by"],
        [
            (lk.label, lk.ref, " ".join(by_ref.get(lk.ref, [])), _when(lk.linked_at), lk.actor)
            for lk in links
        ],
    )


# -- the log -----------------------------------------------------------------------------


def _event_rows(events: Iterable[Event]) -> Iterator[tuple[Any, ...]]:
    from modeltrail.core.events.envelope import to_datetime

    for e in events:
        where = f"{e.partition}:{e.position}" if e.partition else e.position  # Kafka: per partition
        yield (where, _when(to_datetime(e.recorded_at)), e.actor, e.type, e.stream)


EVENT_HEADERS = ["position", "recorded", "actor", "type", "stream"]


@main.command()
@click.option("--after", type=int, help="Only events after this position.")
@click.option("--until", type=int, help="Only events up to this position.")
@click.option("--type", "types", multiple=True, help="Only events of this type (repeatable).")
@click.option("--namespace", "namespace_filter", help="Only events of this namespace.")
@click.option("--stream", help="Only events of this stream (e.g. model:ns/name).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they land.")
@json_option
@click.pass_context
def events(
    ctx: click.Context,
    after: int | None,
    until: int | None,
    types: tuple[str, ...],
    namespace_filter: str | None,
    stream: str | None,
    follow: bool,
    as_json: bool,
) -> None:
    """Print events from the log (JSON Lines with --json)."""
    from modeltrail.consumers.subscriptions import event_document

    registry = _registry(ctx)
    found: Iterable[Event] = registry.events(
        after=after, until=until, types=types or None, namespace=namespace_filter, stream=stream
    )
    if follow:
        found = registry.tail(after=after, types=types or None, namespace=namespace_filter)
    if as_json or follow:
        for event in found:
            click.echo(
                json.dumps(event_document(event), ensure_ascii=False)
                if as_json
                else "  ".join(str(v) for v in next(_event_rows([event])))
            )
        return
    _table(EVENT_HEADERS, _event_rows(found))


@main.command()
@click.option("--namespace", "namespace_filter", help="Only this namespace.")
@click.option("--actor", "actor_filter", help="Only this actor.")
@click.option("--type", "types", multiple=True, help="Only this event type (repeatable).")
@click.option("--since", help="From this time (ISO 8601).")
@click.option("--until", help="Up to this time (ISO 8601).")
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl", "csv"]), default="table")
@json_option
@click.pass_context
def audit(
    ctx: click.Context,
    namespace_filter: str | None,
    actor_filter: str | None,
    types: tuple[str, ...],
    since: str | None,
    until: str | None,
    fmt: str,
    as_json: bool,
) -> None:
    """Who did what, when: the audit trail, as a table, JSON Lines or CSV."""
    from modeltrail.consumers.subscriptions import event_document

    found = _registry(ctx).audit(
        namespace=namespace_filter,
        actor=actor_filter,
        types=types or None,
        since=_parse_time(since) if since else None,
        until=_parse_time(until) if until else None,
    )
    if as_json or fmt == "jsonl":
        for event in found:
            click.echo(json.dumps(event_document(event), ensure_ascii=False))
    elif fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow([*EVENT_HEADERS, "event_id", "data"])
        for event, row in zip(found, _event_rows(found), strict=True):
            writer.writerow([*row, str(event.event_id), json.dumps(event_document(event)["data"])])
    else:
        _table(EVENT_HEADERS, _event_rows(found))


@main.command()
@click.option("--as-of", "as_of", required=True, help="A position or an ISO 8601 time.")
@json_option
@click.pass_context
def replay(ctx: click.Context, as_of: str, as_json: bool) -> None:
    """Print the registry as it was at a position or a moment."""
    registry = _registry(ctx)
    when: datetime | int = int(as_of) if as_of.isdigit() else _parse_time(as_of)
    past = registry.as_of(when)
    found = past.models(None)
    if as_json:
        _echo_json(
            {"position": past.head(), "models": found, "registered": past.registered_models(None)}
        )
        return
    click.echo(f"as of position {past.head()}")
    _table(
        ["model", "versions", "aliases"],
        [
            (m.ref, m.version_count, " ".join(f"{a}:{v}" for a, v in m.aliases.items()))
            for m in found
        ],
    )
    for r in past.registered_models(None):
        click.echo(f"registered {r.ref}: " + " ".join(f"{a}:{t}" for a, t in r.aliases.items()))


@main.command()
@json_option
@click.pass_context
def verify(ctx: click.Context, as_json: bool) -> None:
    """Check hash chains, payload schemas and projections; exit 1 on a problem."""
    report = _registry(ctx).verify()
    if as_json:
        _echo_json(
            {"ok": report.ok, "events_checked": report.events_checked, "problems": report.problems}
        )
    else:
        for problem in report.problems:
            click.echo(f"problem: {problem}")
        click.echo(f"{'ok' if report.ok else 'FAILED'}: {report.events_checked} events checked")
    if not report.ok:
        sys.exit(1)


@main.command()
@click.option("--rebuild", is_flag=True, help="Rebuild every projection from position 0.")
@click.option(
    "--export", "export_to", type=click.Path(), help="Write the projections as JSON lines."
)
@click.option("--once", is_flag=True, help="Kafka: catch up to the log's end, then exit.")
@click.option("--group", default="modeltrail-projector", help="Kafka: projector group name.")
@click.pass_context
def project(
    ctx: click.Context, rebuild: bool, export_to: str | None, once: bool, group: str
) -> None:
    """Bring the projections up to date with the log (or rebuild them). With --kafka, run
    a projector worker until SIGINT/SIGTERM (several may share the work)."""
    registry = _registry(ctx)
    if ctx.obj.get("kafka") and not (rebuild or once):
        from modeltrail.cli.kafka import run_projector

        run_projector(registry, group)
    elif rebuild:
        total = None if ctx.obj.get("kafka") else registry.head()  # Kafka: per partition
        with _progress("replaying", total) as advance:
            position = registry.rebuild(progress=advance)
        click.echo(f"rebuilt projections to position {position}")
    else:
        click.echo(f"projections at position {registry.catch_up()}")
    if export_to:
        Path(export_to).write_text("".join(line + "\n" for line in registry.export()))


@main.command()
@click.option("--fresh", is_flag=True, help="Start from an empty home.")
@click.pass_context
def demo(ctx: click.Context, fresh: bool) -> None:
    """Run the demonstration on an embedded home."""
    from modeltrail.demo import run_demo

    run_demo(ctx.obj, fresh=fresh)


# Commands of other parts register here, each from its own module in this package
# (one import line each, keeping this module the only place that knows them all).
from modeltrail.cli import consumers as _consumers  # noqa: E402, F401
from modeltrail.cli import kafka as _kafka  # noqa: E402, F401
from modeltrail.cli import spool as _spool  # noqa: E402, F401

if __name__ == "__main__":
    main()
