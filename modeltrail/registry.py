"""The registry as users see it: ``mt.open()`` and the methods of ``Registry``.

Every method that changes something runs one command through the engine (one
transaction, one batch of events); every read is a query on the projection tables.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from modeltrail.config import Settings
from modeltrail.core import commands as cmd
from modeltrail.core.batch import Batch
from modeltrail.core.blobs import BlobStore
from modeltrail.core.db import Database, Query
from modeltrail.core.engine import Engine, RegistryEngine
from modeltrail.core.events.envelope import Clock, Event, system_clock, to_micros
from modeltrail.core.events.log import EventLog, LogFilter, VerifyReport
from modeltrail.core.projections.runner import Progress, export
from modeltrail.core.projections.snapshots import SqlSnapshots
from modeltrail.core.projections.tables import (
    ALIASES,
    AliasRow,
    ModelRow,
    RegisteredRow,
    VersionRow,
)
from modeltrail.core.readmodel import ReadModel
from modeltrail.core.refs import LATEST, Ref, Target, check_file_path, check_name
from modeltrail.entities import (
    AliasMove,
    FileInfo,
    Lineage,
    Link,
    Model,
    ModelVersion,
    RegisteredModel,
    RunInfo,
    VersionDiff,
)
from modeltrail.errors import (
    IntegrityError,
    InvalidInput,
    InvalidName,
    ModeltrailError,
    NotFound,
    PromotionRefused,
    ReadOnly,
)

if TYPE_CHECKING:
    from modeltrail.consumers.subscriptions import EventFilter, Subscription
    from modeltrail.core.promotion import PromotionRules
    from modeltrail.producers.run import Run

T = TypeVar("T")
Files = str | os.PathLike[str] | Mapping[str, "str | os.PathLike[str] | bytes"]
BytesProgress = Callable[[int], None]


def open(
    home: str | os.PathLike[str] | None = None,
    *,
    db: str | None = None,
    blobs: str | os.PathLike[str] | None = None,
    kafka: str | None = None,
    actor: str | None = None,
    namespace: str | None = None,
    durability: str | None = None,
    clock: Clock | None = None,
    busy_timeout: float = 30.0,
    kafka_prefix: str | None = None,
) -> Registry:
    """Opens (creating when needed) a registry; see ``modeltrail.config`` for defaults.
    ``busy_timeout``: seconds a write waits for a locked database before raising
    ``LogUnavailable`` (trainers use a short one and spool instead of waiting).
    With ``kafka``, the log is that broker's topics ``<kafka_prefix>.*`` and ``db`` is the
    projection database its projector workers keep (see ``core/kafka_engine.py``)."""
    settings = Settings.resolve(
        home,
        db=db,
        blobs=blobs,
        kafka=kafka,
        actor=actor,
        namespace=namespace,
        durability=durability,
        kafka_prefix=kafka_prefix,
    )
    database = Database(
        settings.db,
        durability=settings.durability,  # type: ignore[arg-type]
        timeout_s=busy_timeout,
    )
    if database.path is not None:
        Path(database.path).parent.mkdir(parents=True, exist_ok=True)
    if settings.kafka:
        from modeltrail.core.kafka_engine import open_kafka_engine

        kafka_engine = open_kafka_engine(
            database, settings.kafka, prefix=settings.kafka_prefix, clock=clock or system_clock
        )
        return Registry(settings, kafka_engine, database.reader())
    engine = Engine(database, clock=clock or system_clock)
    engine.prepare()
    engine.runner.snapshots = SqlSnapshots(database, engine.log, engine.runner, engine.clock)
    return Registry(settings, engine, database.reader())


class Registry:
    """A model registry over an event log. Obtain one with ``modeltrail.open()``."""

    def __init__(
        self,
        settings: Settings,
        engine: RegistryEngine | None,
        query: Query,
        *,
        until: int | None = None,
    ) -> None:
        self.settings = settings
        self.actor = settings.actor
        self.namespace = settings.namespace
        self.blobs = BlobStore(settings.blobs)
        self._engine = engine
        self._read = ReadModel(query)
        self._until = until

    # -- models and versions ---------------------------------------------------------

    def create_model(
        self,
        name: str,
        *,
        arch_hash: str | None = None,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Model:
        ref = self._ref(name)
        self._write(
            lambda b: cmd.create_model(
                b, ref.ns, ref.name, arch_hash=arch_hash, description=description, tags=tags
            )
        )
        return self.model(str(ref))

    def model(self, ref: str) -> Model:
        parsed = self._ref(ref)
        row = self._read.model(parsed.ns, parsed.name)
        if row is None:
            raise NotFound(f"model {parsed.ns}/{parsed.name} does not exist")
        return self._model_from_row(row, self._read.aliases_of(row.namespace, "model", row.name))

    def models(self, namespace: str | None = None) -> list[Model]:
        """The models of a namespace (None: of every namespace), in two queries."""
        aliases = self._aliases_by_owner("model", namespace)
        return [
            self._model_from_row(r, aliases.get((r.namespace, r.name), []))
            for r in self._read.models(namespace)
        ]

    def versions(self, model_ref: str) -> list[ModelVersion]:
        parsed = self._ref(model_ref)
        model = self._read.model(parsed.ns, parsed.name)
        if model is None:
            raise NotFound(f"model {parsed.ns}/{parsed.name} does not exist")
        at: dict[int, list[str]] = {}
        for a in self._read.aliases_of(model.namespace, "model", model.name):
            at.setdefault(a.target_idx, []).append(a.alias)
        rows = self._read.versions(parsed.ns, parsed.name)
        return [self._version(r, model.version_count, at.get(r.idx, [])) for r in rows]

    def log_version(
        self,
        model_ref: str,
        files: Files,
        *,
        metadata: Mapping[str, Any] | None = None,
        aliases: Sequence[str] = (),
        run: str | None = None,
        epoch: int | None = None,
        arch_hash: str | None = None,
        derived_from: Sequence[str] = (),
        progress: BytesProgress | None = None,
    ) -> ModelVersion:
        """Stores the files and logs a version of the model (created when absent). A
        manifest equal to the latest version's logs nothing and returns that version."""
        ref = self._ref(model_ref)
        entries = self._store_files(files, progress)
        sources = [self._target(r) for r in derived_from]
        target = self._write(
            lambda b: cmd.log_version(
                b,
                ref.ns,
                ref.name,
                entries,
                metadata=metadata,
                aliases=aliases,
                run=run,
                epoch=epoch,
                arch_hash=arch_hash,
                derived_from=sources,
            )
        )
        return self._get_target(target)

    def get(self, ref: str) -> ModelVersion:
        return self._get_target(self._target(ref))

    def set_tags(self, ref: str, tags: Mapping[str, str], *, remove: Sequence[str] = ()) -> None:
        """Sets tags on a model (``m``), a version (``m:v2``) or a registered model."""
        parsed = self._ref(ref)
        if self._read.registered(parsed.ns, parsed.name) is not None:
            kind, index = "registered", None
        elif ":" in ref:
            kind, index = "version", self._target(ref).index
        else:
            kind, index = "model", None
        self._write(lambda b: cmd.set_tags(b, kind, parsed.ns, parsed.name, index, tags, remove))

    def set_quota(self, namespace: str, max_models: int | None) -> None:
        """Limits the number of models in a namespace (None lifts the limit)."""
        self._write(lambda b: cmd.set_quota(b, check_name(namespace, "namespace"), max_models))

    # -- aliases ---------------------------------------------------------------------

    def set_alias(
        self, ref: str, alias: str, *, expected: str | None = None, force: bool = False
    ) -> None:
        """Points ``alias`` of the model or registered model named in ``ref`` at the version
        ``ref`` names; ``expected`` (a version label or reference) makes it compare-and-set;
        ``force`` moves an alias its promotion rules protect (the override is recorded)."""
        parsed = self._ref(ref)

        def decide(b: Batch) -> None:
            read = ReadModel(b.query)
            kind = self._owner_kind(read, parsed)
            target = read.resolve(parsed)
            want = False if expected is None else self._expected(read, parsed, expected)
            cmd.set_alias(
                b, kind, parsed.ns, parsed.name, alias, target, expected=want, force=force
            )

        self._write(decide)

    def remove_alias(self, model_ref: str, alias: str, *, force: bool = False) -> None:
        parsed = self._ref(model_ref)

        def decide(b: Batch) -> None:
            kind = self._owner_kind(ReadModel(b.query), parsed)
            cmd.remove_alias(b, kind, parsed.ns, parsed.name, alias, force=force)

        self._write(decide)

    def set_promotion_rules(
        self, ref: str, *, stages: Sequence[str] = (), protected: Sequence[str] = ()
    ) -> PromotionRules:
        """Sets the promotion rules of a model or registered model, replacing its earlier
        ones (empty lists lift them). ``stages`` are aliases in promotion order: an alias
        may only point at a version that held the stage before it. ``protected`` aliases,
        once set, move or go only with ``force=True``. Refusals are recorded as
        ``AliasMoveRefused`` events."""
        from modeltrail.core import promotion

        parsed = self._ref(ref)

        def decide(b: Batch) -> None:
            kind = self._owner_kind(ReadModel(b.query), parsed)
            promotion.set_rules(b, kind, parsed.ns, parsed.name, stages, protected)

        self._write(decide)
        return self.promotion_rules(ref)

    def promotion_rules(self, ref: str) -> PromotionRules:
        from modeltrail.core.promotion import read_rules

        parsed = self._ref(ref)
        kind = self._owner_kind(self._read, parsed)
        return read_rules(self._read.query, parsed.ns, kind, parsed.name)

    def alias_history(self, model_ref: str, alias: str) -> list[AliasMove]:
        parsed = self._ref(model_ref)
        kind = self._owner_kind(self._read, parsed)
        moves = self._read.alias_moves(parsed.ns, kind, parsed.name, alias)
        return [AliasMove.from_row(m) for m in moves]

    # -- registered models -----------------------------------------------------------

    def link(self, ref: str, registered_name: str, *, aliases: Sequence[str] = ()) -> None:
        """Links a version into a registered model (created when absent)."""
        registered = self._ref(registered_name)

        def decide(b: Batch) -> None:
            target = ReadModel(b.query).resolve(self._ref(ref))
            cmd.link(b, target, registered.ns, registered.name, aliases)

        self._write(decide)

    def unlink(self, ref: str, registered_name: str) -> None:
        registered = self._ref(registered_name)

        def decide(b: Batch) -> None:
            read = ReadModel(b.query)
            target = read.resolve(self._ref(ref))
            on_it = [
                a.alias
                for a in read.aliases_at(target)
                if (a.namespace, a.owner_kind, a.owner)
                == (registered.ns, "registered", registered.name)
            ]
            cmd.unlink(b, target, registered.ns, registered.name, on_it)

        self._write(decide)

    def registered(self, name: str) -> RegisteredModel:
        parsed = self._ref(name)
        row = self._read.registered(parsed.ns, parsed.name)
        if row is None:
            raise NotFound(f"registered model {parsed.ns}/{parsed.name} does not exist")
        return self._registered_from_row(
            row, self._read.aliases_of(row.namespace, "registered", row.name)
        )

    def registered_models(self, namespace: str | None = None) -> list[RegisteredModel]:
        """The registered models of a namespace (None: of every one), in two queries."""
        aliases = self._aliases_by_owner("registered", namespace)
        return [
            self._registered_from_row(r, aliases.get((r.namespace, r.name), []))
            for r in self._read.registered_models(namespace)
        ]

    def links(self, registered_name: str) -> list[Link]:
        parsed = self._ref(registered_name)
        self.registered(registered_name)
        return [Link.from_row(r) for r in self._read.links(parsed.ns, parsed.name)]

    # -- files -----------------------------------------------------------------------

    def download(
        self, ref: str, dest: str | os.PathLike[str], *, progress: BytesProgress | None = None
    ) -> Path:
        """Writes the version's files under ``dest``, verifying every sha256, and records
        the download."""
        version = self.get(ref)
        if version.purged:
            raise NotFound(f"the files of {version.ref} were purged by a retention policy")
        root = Path(dest)
        for entry in version.files:
            check_file_path(entry.path)
            self.blobs.copy_verified(
                entry.sha256, entry.size, root.joinpath(*entry.path.split("/"))
            )
            if progress:
                progress(entry.size)
        row = self._read.version(version.target)
        assert row is not None
        self._write(
            lambda b: cmd.record_download(b, row, len(version.files), version.size, str(dest))
        )
        return root

    def diff(self, ref_a: str, ref_b: str) -> VersionDiff:
        a, b = self.get(ref_a), self.get(ref_b)
        files_a = {f.path: f.sha256 for f in a.files}
        files_b = {f.path: f.sha256 for f in b.files}
        keys = sorted(set(a.metadata) | set(b.metadata))
        return VersionDiff(
            a.ref,
            b.ref,
            added=sorted(set(files_b) - set(files_a)),
            removed=sorted(set(files_a) - set(files_b)),
            changed=sorted(p for p in set(files_a) & set(files_b) if files_a[p] != files_b[p]),
            metadata={
                k: (a.metadata.get(k), b.metadata.get(k))
                for k in keys
                if a.metadata.get(k) != b.metadata.get(k)
            },
        )

    # -- runs and lineage ------------------------------------------------------------

    def run(
        self,
        model_ref: str,
        name: str,
        *,
        config: Mapping[str, Any] | None = None,
        allow_config_change: bool = False,
        arch_hash: str | None = None,
    ) -> Run:
        """Starts a run of a model, or resumes it when the name exists (same config)."""
        from modeltrail.producers.run import Run

        parsed = self._ref(model_ref)
        resumed = self._write(
            lambda b: cmd.open_run(
                b,
                parsed.ns,
                parsed.name,
                name,
                config,
                allow_config_change=allow_config_change,
                arch_hash=arch_hash,
            )
        )
        return Run(self, parsed.ns, parsed.name, name, resumed=resumed)

    def run_info(self, model_ref: str, name: str) -> RunInfo:
        parsed = self._ref(model_ref)
        row = self._read.run(parsed.ns, parsed.name, name)
        if row is None:
            raise NotFound(f"run {name!r} of model {parsed.ns}/{parsed.name} does not exist")
        return RunInfo.from_row(row)

    def runs(self, model_ref: str) -> list[RunInfo]:
        parsed = self._ref(model_ref)
        return [RunInfo.from_row(r) for r in self._read.runs(parsed.ns, parsed.name)]

    def metrics(self, model_ref: str, run: str) -> list[tuple[str, int | None, float, datetime]]:
        """(key, step, value, time) of every metric the run logged, in log order."""
        from modeltrail.core.events.envelope import to_datetime

        parsed = self._ref(model_ref)
        rows = self._read.metrics(parsed.ns, parsed.name, run)
        return [(r.key, r.step, r.value, to_datetime(r.at)) for r in rows]

    def lineage(self, ref: str) -> Lineage:
        target = self._target(ref)
        row = self._read.version(target)
        assert row is not None
        run_row = None if row.run is None else self._read.run(row.namespace, row.model, row.run)
        inputs = (
            []
            if run_row is None
            else [
                str(Target(c.used_namespace, c.used_model, c.used_idx))
                for c in self._read.consumed_by(row.namespace, row.model, run_row.name)
            ]
        )
        return Lineage(
            version=str(target),
            run=None if run_row is None else RunInfo.from_row(run_row),
            inputs=inputs,
            derived_from=[
                str(Target(d.from_namespace, d.from_model, d.from_idx))
                for d in self._read.derived_from(target)
            ],
            derivatives=[
                str(Target(d.namespace, d.model, d.idx)) for d in self._read.derivatives_of(target)
            ],
            consumers=[f"{c.namespace}/{c.model}/{c.run}" for c in self._read.consumers_of(target)],
            registered=[f"{lk.namespace}/{lk.registered}" for lk in self._read.links_to(target)],
        )

    # -- the log ---------------------------------------------------------------------

    def events(
        self,
        *,
        after: int | None = None,
        until: int | None = None,
        types: Iterable[str] | None = None,
        namespace: str | None = None,
        stream: str | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        before: datetime | None = None,
    ) -> Iterator[Event]:
        """Events in log order, filtered; ``until`` and ``after`` are positions."""
        where = LogFilter(
            types=None if types is None else frozenset(types),
            streams=None if stream is None else frozenset([stream]),
            namespace=namespace,
            actor=actor,
            recorded_since=None if since is None else to_micros(since),
            recorded_until=None if before is None else to_micros(before),
        )
        bound = until if self._until is None else min(until or self._until, self._until)
        return self._log.read(after=after, until=bound, where=where)

    def audit(
        self,
        *,
        namespace: str | None = None,
        actor: str | None = None,
        types: Iterable[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[Event]:
        """Who did what, when: every event matching the filters, in log order."""
        return list(
            self.events(namespace=namespace, actor=actor, types=types, since=since, before=until)
        )

    def tail(
        self,
        *,
        after: int | None = None,
        types: Iterable[str] | None = None,
        namespace: str | None = None,
        idle_s: float | None = None,
    ) -> Iterator[Event]:
        """New events as they land (from ``after``, else from now); blocks between them."""
        where = LogFilter(types=None if types is None else frozenset(types), namespace=namespace)
        return self._log.tail(after=after, where=where, idle_s=idle_s)

    def subscribe(
        self,
        group: str,
        *,
        types: Iterable[str] | None = None,
        model: str | None = None,
        alias: str | None = None,
        timeout: float | None = None,
        start: str = "earliest",
    ) -> Subscription:
        """A durable subscription of ``group``: it resumes after the group's last commit
        (a new group starts at the beginning of the log, or at its end with
        ``start="latest"``). ``model`` (a model or registered model, ``[ns/]name``) and
        ``alias`` narrow it to that owner's events and to moves of that alias; iteration
        stops after ``timeout`` seconds without a matching event (None: never). Over Kafka
        the group is the consumer group ``<kafka_prefix>.subscription.<group>``, and only
        events the projection accepted are handed out."""
        from modeltrail.consumers.subscriptions import Subscription, open_feed

        check_name(group, "subscription group")
        if self._until is not None:
            raise ReadOnly(
                f"this registry is as of position {self._until}: subscribe on a registry "
                "from modeltrail.open()"
            )
        if start not in ("earliest", "latest"):
            raise InvalidInput(f"start {start!r} is invalid: use 'earliest' or 'latest'")
        where = self._event_filter(types, model, alias)
        engine = self._require_engine()
        feed = open_feed(
            engine,
            group,
            where,
            start="latest" if start == "latest" else "earliest",
            actor=self.actor,
        )
        return Subscription(group, feed, where, timeout=timeout)

    def _event_filter(
        self, types: Iterable[str] | None, model: str | None, alias: str | None
    ) -> EventFilter:
        """The filter of a subscription or webhook: ``types`` (known ones), the events of
        ``model`` (a model or registered model, ``[ns/]name``) and the moves of ``alias``."""
        from modeltrail.consumers.subscriptions import EventFilter

        if alias is not None:
            check_name(alias, "alias")
        owner = None
        if model is not None:
            if ":" in model:
                raise InvalidName(f"model {model!r} is invalid here: name a model, not a version")
            parsed = self._ref(model)
            owner = (parsed.ns, parsed.name)
        return EventFilter.build(
            types=types, owner=owner, alias=alias, known_types=self._require_engine().codec.types
        )

    def catch_up(self) -> int:
        """Applies log events the projections have not seen; returns the position reached."""
        return self._require_engine().catch_up()

    def head(self) -> int:
        """The position of the last event (the last one visible, for ``as_of``)."""
        return self._until if self._until is not None else self._log.head()

    def as_of(self, when: datetime | int) -> Registry:
        """A read-only registry as it was at a position or a moment (by append time)."""
        from modeltrail.core.projections.as_of import memory_query

        past, position = self._require_engine().past(when, self._until)
        state = past.runner.fold_log(past.log, until=position)
        query = memory_query(state, past.runner.specs)
        return Registry(self.settings, past, query, until=position)

    def verify(self) -> VerifyReport:
        """Checks every hash chain, that every payload decodes with a known schema, and that
        the projections equal a fresh fold of the log."""
        engine = self._require_engine()
        report = VerifyReport()
        try:
            events = list(engine.log.read(until=self._until))
        except Exception as exc:  # a row the driver cannot even read is itself the finding
            report.problems.append(f"the log cannot be read: {type(exc).__name__}: {exc}")
            return report
        report.events_checked, problems = engine.log.verify(events)
        report.problems.extend(str(p) for p in problems)
        for event in events:
            if event.type in engine.codec.types:
                try:
                    engine.codec.decode(event)
                except ModeltrailError as exc:
                    report.problems.append(f"position {event.position}: {exc}")
        if report.problems:
            report.problems.append(
                "the log itself fails verification, so its projections were not compared: "
                "a rebuild would only fold the damaged log again; restore the log from a "
                "replica or backup"
            )
        elif self._until is None:
            report.problems.extend(engine.drift(self._read.query, events))
        return report

    def export(self) -> list[str]:
        """Every projection row as canonical JSON lines (equal state gives equal text)."""
        return list(export(self._read.query, self._require_engine().runner.specs))

    def rebuild(self, progress: Progress | None = None) -> int:
        """Rebuilds every projection from position 0; returns the position reached."""
        return self._require_engine().rebuild(progress)

    def close(self) -> None:
        if self._engine is not None and self._until is None:
            self._engine.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------

    @property
    def _log(self) -> EventLog:
        return self._require_engine().log

    def _require_engine(self) -> RegistryEngine:
        if self._engine is None:
            raise ReadOnly("this registry has no log attached")
        return self._engine

    def _write(self, decide: Callable[[Batch], T]) -> T:
        if self._engine is None or self._until is not None:
            raise ReadOnly(
                f"this registry is read-only (as of position {self._until}): "
                "writes go to a registry from modeltrail.open()"
            )
        try:
            result, _ = self._engine.write(decide, actor=self.actor)
        except PromotionRefused as refused:
            self._record_refusal(refused)
            raise
        return result

    def _record_refusal(self, refused: PromotionRefused) -> None:
        """The refused batch rolled back; the refusal itself goes in as its own write."""
        from modeltrail.core.promotion import record_refusal

        assert self._engine is not None
        with contextlib.suppress(ModeltrailError):  # never hide the refusal itself
            self._engine.write(lambda b: record_refusal(b, refused), actor=self.actor)

    def _ref(self, text: str) -> Ref:
        return Ref.parse(text).resolved(self.namespace)

    def _target(self, ref: str) -> Target:
        return self._read.resolve(self._ref(ref))

    def _get_target(self, target: Target) -> ModelVersion:
        row = self._read.version(target)
        model = self._read.model(target.namespace, target.model)
        if row is None or model is None:
            raise NotFound(f"version {target} does not exist")
        aliases = [a.alias for a in self._read.aliases_at(target) if a.owner_kind == "model"]
        return self._version(row, model.version_count, aliases)

    @staticmethod
    def _version(row: VersionRow, version_count: int, aliases: list[str]) -> ModelVersion:
        """A version from its row, its model's version count (``latest`` is the last one)
        and the aliases of its model that point at it."""
        latest = [LATEST] if row.idx == version_count - 1 else []
        return ModelVersion.from_row(row, sorted([*aliases, *latest]))

    def _model_from_row(self, row: ModelRow, aliases: Iterable[AliasRow]) -> Model:
        """A model from its row and the rows of its aliases."""
        labels = {a.alias: f"v{a.target_idx}" for a in aliases}
        if row.version_count:
            labels[LATEST] = f"v{row.version_count - 1}"
        return Model.from_row(row, labels, self)

    def _registered_from_row(
        self, row: RegisteredRow, aliases: Iterable[AliasRow]
    ) -> RegisteredModel:
        """A registered model from its row and the rows of its aliases."""
        targets = {
            a.alias: str(Target(a.target_namespace, a.target_model, a.target_idx)) for a in aliases
        }
        return RegisteredModel.from_row(row, targets, self)

    def _aliases_by_owner(
        self, kind: str, namespace: str | None
    ) -> dict[tuple[str, str], list[AliasRow]]:
        """Every alias of the owners of one kind in a namespace (None: all), by owner."""
        where = (
            {"owner_kind": kind}
            if namespace is None
            else {"owner_kind": kind, "namespace": namespace}
        )
        found: dict[tuple[str, str], list[AliasRow]] = {}
        for a in self._read.where(ALIASES, order="alias", **where):
            found.setdefault((a.namespace, a.owner), []).append(a)
        return found

    @staticmethod
    def _owner_kind(read: ReadModel, ref: Ref) -> str:
        if read.model(ref.ns, ref.name) is not None:
            return "model"
        if read.registered(ref.ns, ref.name) is not None:
            return "registered"
        raise NotFound(f"{ref.ns}/{ref.name} is neither a model nor a registered model")

    @staticmethod
    def _expected(read: ReadModel, owner: Ref, expected: str) -> Target:
        ref = Ref.parse(expected if ":" in expected else f"{owner.name}:{expected}")
        return read.resolve(ref.resolved(owner.ns))

    def _store_files(self, files: Files, progress: BytesProgress | None) -> list[cmd.FileEntry]:
        entries = []
        for name, source in sorted(collect_files(files).items()):
            check_file_path(name)
            if isinstance(source, bytes):
                digest, size = self.blobs.put_bytes(source)
            else:
                digest, size = self.blobs.put_file(source)
            entries.append(cmd.FileEntry(name, size, digest))
            if progress:
                progress(size)
        return entries


def collect_files(files: Files) -> dict[str, str | os.PathLike[str] | bytes]:
    """The files of a version by relative name: a file, a directory tree or a mapping."""
    if isinstance(files, Mapping):
        return dict(files)
    if not isinstance(files, str | os.PathLike):
        raise InvalidInput(
            f"files {files!r} are invalid: pass a path (file or directory) or a mapping "
            "{name: path or bytes}"
        )
    root = Path(files)
    if root.is_file():
        return {root.name: root}
    if not root.is_dir():
        raise NotFound(f"no file or directory at {str(root)!r}")
    found: dict[str, str | os.PathLike[str] | bytes] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            found[path.relative_to(root).as_posix()] = path
    if not found:
        raise InvalidInput(f"directory {str(root)!r} holds no files")
    return found


__all__ = ["FileInfo", "IntegrityError", "Registry", "open"]
