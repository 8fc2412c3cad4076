"""The jobs a schedule runs: retention, promotion policies, projection snapshots, catch-up.

Each is a plain function of a registry, so it can be run by hand, by a test, or by the
scheduler. Time comes from the registry's clock (``mt.open(clock=…)``), so a test can move
it days ahead.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modeltrail.core import commands as cmd
from modeltrail.core.batch import Batch
from modeltrail.core.projections.snapshots import SqlSnapshots
from modeltrail.core.projections.tables import VERSIONS, VersionRow
from modeltrail.core.readmodel import ReadModel
from modeltrail.core.refs import Target
from modeltrail.errors import ConcurrencyConflict, InvalidInput, NotFound, PromotionRefused

if TYPE_CHECKING:
    from modeltrail.registry import Registry

DAY_US = 86_400 * 1_000_000


# -- retention ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionResult:
    purged: list[str] = field(default_factory=list)
    """versions whose blob contents were purged by this run"""
    blobs_deleted: int = 0
    skipped: list[str] = field(default_factory=list)
    """versions that qualified but sit in a namespace this actor may not write"""

    def __str__(self) -> str:
        return f"purged {len(self.purged)} versions, deleted {self.blobs_deleted} blobs" + (
            f", skipped {len(self.skipped)} (personal namespaces)" if self.skipped else ""
        )


def retention(
    registry: Registry,
    *,
    days: float,
    namespace: str | None = None,
    reason: str = "",
    blob_grace_s: float | None = None,
) -> RetentionResult:
    """Purges the blob contents of versions older than ``days`` that hold no alias: not
    ``latest``, no alias of their model, no alias of a registered model they are linked
    in. Each purge is a ``BlobsPurged`` event (the version's metadata stays). Blob files
    are deleted only once no unpurged version refers to their digest and the file has not
    been stored or reused for ``blob_grace_s`` seconds (wall-clock; default an hour)."""
    if days < 0:
        raise InvalidInput(f"days {days!r} is invalid: retention keeps versions for ≥ 0 days")
    reason = reason or f"retention: no alias and older than {days:g} days"
    purged: list[str] = []
    skipped: list[str] = []

    def decide(b: Batch) -> None:
        read = ReadModel(b.query)
        cutoff = b.recorded_at - int(days * DAY_US)
        for model in read.models(namespace):
            owner = read.namespace(model.namespace)
            for version in read.versions(model.namespace, model.name):
                target = Target(version.namespace, version.model, version.idx)
                if (
                    version.purged_at is not None
                    or version.created_at > cutoff
                    or version.idx == model.version_count - 1  # latest
                    or read.aliases_at(target)
                ):
                    continue
                if owner is not None and owner.personal and owner.owner != b.actor:
                    skipped.append(str(target))
                    continue
                digests = sorted({f[2] for f in json.loads(version.files)})
                cmd.purge_blobs(b, version, digests, reason)
                purged.append(str(target))

    registry._write(decide)
    grace = BLOB_GRACE_S if blob_grace_s is None else blob_grace_s
    return RetentionResult(purged, collect_blobs(registry, grace_s=grace), skipped)


BLOB_GRACE_S = 3600.0
"""A blob stored or reused this recently is kept even when no version refers to it yet:
its version may be about to commit (uploads happen before their command)."""


def collect_blobs(registry: Registry, *, grace_s: float = BLOB_GRACE_S) -> int:
    """Deletes blob files that only purged versions refer to; returns how many went.

    Run after the purge has committed: a crash in between leaves files that the next run
    deletes, never a referenced file deleted."""
    kept: set[str] = set()
    released: set[str] = set()
    rows: list[VersionRow] = registry._read.where(VERSIONS)
    for row in rows:
        digests = {f[2] for f in json.loads(row.files)}
        (released if row.purged_at is not None else kept).update(digests)
    return sum(registry.blobs.delete(d, unused_for_s=grace_s) for d in sorted(released - kept))


# -- promotion policy ----------------------------------------------------------------------

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}
SOURCES = ("metadata", "run", "any")


def metric_of(
    version: VersionRow,
    metric: str,
    source: str,
    last_logged: Callable[[str], Mapping[str, float]],
) -> float | None:
    """A version's value of ``metric``: from its metadata, or the last value its run
    logged (``source`` "any" tries the metadata first). ``last_logged(run)``: the last
    value of each metric a run of the version's model logged (see ``last_logged``)."""
    if source in ("metadata", "any"):
        value = json.loads(version.metadata).get(metric)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    if source in ("run", "any") and version.run is not None:
        logged = last_logged(version.run).get(metric)
        if logged is not None:
            return float(logged)
    return None


def last_logged(registry: Registry, model: str) -> Callable[[str], Mapping[str, float]]:
    """``run -> {metric: the last value it logged}`` for the runs of ``model``, each run's
    metrics read once (several versions of one run share them)."""

    @functools.cache
    def of(run: str) -> Mapping[str, float]:
        return {key: value for key, _step, value, _at in registry.metrics(model, run)}

    return of


def promote(
    registry: Registry,
    *,
    model: str,
    alias: str,
    metric: str,
    threshold: float,
    op: str = ">=",
    source: str = "any",
) -> str | None:
    """Moves ``alias`` of ``model`` to the newest version newer than the one it points at
    whose ``metric`` passes ``threshold`` (``op``: >=, >, <=, <). Returns the version it
    moved to, or None (nothing passed, the alias moved meanwhile, or a promotion rule
    refused the move, which is then in the audit trail)."""
    if op not in COMPARISONS:
        raise InvalidInput(f"op {op!r} is invalid: use one of {', '.join(COMPARISONS)}")
    if source not in SOURCES:
        raise InvalidInput(f"source {source!r} is invalid: use one of {', '.join(SOURCES)}")
    passes = COMPARISONS[op]
    found = registry.model(model)
    current = found.aliases.get(alias)
    since = -1 if current is None else int(current[1:])
    rows = registry._read.versions(found.namespace, found.name)
    logged = last_logged(registry, found.ref)
    for row in sorted(rows, key=lambda r: r.idx, reverse=True):
        if row.idx <= since:
            break
        value = metric_of(row, metric, source, logged)
        if value is None or not passes(value, threshold):
            continue
        ref = f"{found.namespace}/{found.name}:v{row.idx}"
        try:
            registry.set_alias(ref, alias, expected=current)
        except (ConcurrencyConflict, PromotionRefused):
            return None
        return ref
    return None


# -- snapshots and catch-up ------------------------------------------------------------------


def snapshot(registry: Registry, *, keep: int | None = 5) -> int:
    """Stores the projections' fold at the log's head (folding on from the nearest earlier
    snapshot); keeps the newest ``keep``. Returns the position (0: empty log, nothing
    stored)."""
    engine = registry._require_engine()
    position = engine.log.head()
    if position == 0:
        return 0
    store = engine.runner.snapshots
    if not isinstance(store, SqlSnapshots):
        raise NotFound("this registry keeps no projection snapshots")
    state = engine.runner.fold_log(engine.log, until=position)
    store.save(state, position, keep=keep)
    return position


def catch_up(registry: Registry) -> int:
    return registry.catch_up()
