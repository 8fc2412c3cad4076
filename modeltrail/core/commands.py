"""Registry commands: check the arguments, look at the current state, emit events.

Each command takes a ``Batch`` (whose state already shows what the command emitted so
far) and decides which events to emit. The rules that must also hold under concurrent
writers live in the folds, which ``Batch.emit`` runs at once; what is here is argument
checking, defaults, and the decisions only a command can make (the next version number,
where an alias comes from, whether a manifest is new).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modeltrail.core.batch import Batch
from modeltrail.core.projections.fold import dumps
from modeltrail.core.projections.streams import check_namespace_write
from modeltrail.core.projections.tables import (
    ALIASES,
    LINKS,
    MODELS,
    NAMESPACES,
    REGISTERED,
    RUNS,
    VERSIONS,
    ModelRow,
    RunRow,
    VersionRow,
)
from modeltrail.core.promotion import override_protection, owner_stream
from modeltrail.core.refs import (
    Target,
    check_alias,
    check_file_path,
    check_metric_name,
    check_name,
    inference_stream,
    model_stream,
    namespace_stream,
    personal_namespace,
    registered_stream,
    run_stream,
)
from modeltrail.errors import (
    ArchitectureMismatch,
    ConcurrencyConflict,
    InvalidInput,
    NotFound,
    RunConfigConflict,
)


@dataclass(frozen=True)
class FileEntry:
    """One file of a version's manifest."""

    path: str
    size: int
    sha256: str


def manifest_digest(files: Sequence[FileEntry]) -> str:
    canonical = dumps(sorted((f.path, f.size, f.sha256) for f in files))
    return hashlib.sha256(canonical.encode()).hexdigest()


def config_digest(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(dumps(config).encode()).hexdigest()


def ensure_namespace(b: Batch, namespace: str) -> None:
    check_name(namespace, "namespace")
    if b.state.get(NAMESPACES, (namespace,)) is None:
        b.emit(
            "NamespaceCreated",
            namespace_stream(namespace),
            namespace,
            {
                "name": namespace,
                "owner": b.actor,
                "personal": namespace == personal_namespace(b.actor),
            },
        )


def set_quota(b: Batch, namespace: str, max_models: int | None) -> None:
    if max_models is not None and (not isinstance(max_models, int) or max_models < 0):
        raise InvalidInput(f"quota {max_models!r} is invalid: a quota is a count of models ≥ 0")
    ensure_namespace(b, namespace)
    b.emit(
        "QuotaSet",
        namespace_stream(namespace),
        namespace,
        {"namespace": namespace, "max_models": max_models},
    )


def create_model(
    b: Batch,
    namespace: str,
    name: str,
    *,
    arch_hash: str | None = None,
    description: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    check_name(name, "model name")
    ensure_namespace(b, namespace)
    b.emit(
        "ModelCreated",
        model_stream(namespace, name),
        namespace,
        {
            "name": name,
            "arch_hash": arch_hash,
            "description": description,
            "tags": _tags(tags),
        },
    )


def ensure_model(b: Batch, namespace: str, name: str, arch_hash: str | None) -> ModelRow:
    """The model, created on first use and bound to ``arch_hash`` when it has none."""
    model: ModelRow | None = b.state.get(MODELS, (namespace, name))
    if model is None:
        create_model(b, namespace, name, arch_hash=arch_hash)
        model = b.state.get(MODELS, (namespace, name))
        assert model is not None
    elif arch_hash is not None and model.arch_hash not in (None, arch_hash):
        raise ArchitectureMismatch(
            f"architecture {arch_hash} differs from {model.arch_hash}, the one model "
            f"{namespace}/{name} is bound to: a new architecture needs a new model name"
        )
    return model


def log_version(
    b: Batch,
    namespace: str,
    model_name: str,
    files: Sequence[FileEntry],
    *,
    metadata: Mapping[str, Any] | None = None,
    aliases: Sequence[str] = (),
    run: str | None = None,
    epoch: int | None = None,
    arch_hash: str | None = None,
    derived_from: Sequence[Target] = (),
) -> Target:
    """Logs a version unless its manifest equals the latest one; returns the version."""
    check_name(model_name, "model name")
    aliases = [check_alias(a) for a in aliases]
    if not files:
        raise InvalidInput(f"a version of {namespace}/{model_name} needs at least one file")
    for entry in files:
        check_file_path(entry.path)
    if epoch is not None and (not isinstance(epoch, int) or epoch < 0):
        raise InvalidInput(f"epoch {epoch!r} is invalid: epochs are integers ≥ 0")
    ensure_namespace(b, namespace)
    model = ensure_model(b, namespace, model_name, arch_hash)
    digest = manifest_digest(files)
    latest = _latest(b, model)
    if latest is not None and latest.digest == digest:
        target = Target(namespace, model_name, latest.idx)
    else:
        if run is not None:
            _existing_run(b, namespace, model_name, run)
        target = Target(namespace, model_name, model.version_count)
        b.emit(
            "VersionLogged",
            model_stream(namespace, model_name),
            namespace,
            {
                "model": model_name,
                "index": target.index,
                "files": [
                    {"path": f.path, "size": f.size, "sha256": f.sha256}
                    for f in sorted(files, key=lambda f: f.path)
                ],
                "digest": digest,
                "metadata": dumps(dict(metadata or {})),
                "run": run,
                "epoch": epoch,
                "arch_hash": arch_hash,
                "derived_from": [str(t) for t in derived_from],
            },
        )
    for alias in aliases:
        set_alias(b, "model", namespace, model_name, alias, target)
    return target


def set_alias(
    b: Batch,
    owner_kind: str,
    namespace: str,
    owner: str,
    alias: str,
    target: Target,
    *,
    expected: Target | bool | None = False,
    force: bool = False,
) -> bool:
    """Points an alias at ``target``; ``expected`` (a target or None for "unset") makes
    it a compare-and-set; ``force`` moves a protected alias. Returns False when the alias
    already points there."""
    check_alias(alias)
    current = _alias_target(b, owner_kind, namespace, owner, alias)
    if expected is not False and expected != current:
        raise ConcurrencyConflict(
            f"alias {alias!r} of {namespace}/{owner} is at {current or 'nothing'}, "
            f"not at {expected or 'nothing'} as expected"
        )
    if current == target:
        return False
    if force:
        override_protection(b, owner_kind, namespace, owner, alias, target)
    b.emit(
        "AliasMoved",
        owner_stream(owner_kind, namespace, owner),
        namespace,
        {
            "owner_kind": owner_kind,
            "owner": owner,
            "alias": alias,
            "from_namespace": current.namespace if current else None,
            "from_model": current.model if current else None,
            "from_index": current.index if current else None,
            "to_namespace": target.namespace,
            "to_model": target.model,
            "to_index": target.index,
        },
    )
    return True


def remove_alias(
    b: Batch, owner_kind: str, namespace: str, owner: str, alias: str, *, force: bool = False
) -> None:
    check_alias(alias)
    current = _alias_target(b, owner_kind, namespace, owner, alias)
    if current is None:
        raise NotFound(f"alias {alias!r} of {namespace}/{owner} is not set")
    if force:
        override_protection(b, owner_kind, namespace, owner, alias, None)
    b.emit(
        "AliasRemoved",
        owner_stream(owner_kind, namespace, owner),
        namespace,
        {
            "owner_kind": owner_kind,
            "owner": owner,
            "alias": alias,
            "from_namespace": current.namespace,
            "from_model": current.model,
            "from_index": current.index,
        },
    )


def set_tags(
    b: Batch,
    target_kind: str,
    namespace: str,
    name: str,
    index: int | None,
    tags: Mapping[str, str],
    removed: Sequence[str] = (),
) -> None:
    stream = (
        registered_stream(namespace, name)
        if target_kind == "registered"
        else model_stream(namespace, name)
    )
    b.emit(
        "TagsSet",
        stream,
        namespace,
        {
            "target_kind": target_kind,
            "name": name,
            "index": index,
            "set": _tags(tags),
            "removed": sorted(removed),
        },
    )


def ensure_registered(b: Batch, namespace: str, name: str, description: str | None = None) -> None:
    check_name(name, "registered model name")
    ensure_namespace(b, namespace)
    if b.state.get(REGISTERED, (namespace, name)) is None:
        b.emit(
            "RegisteredModelCreated",
            registered_stream(namespace, name),
            namespace,
            {"name": name, "description": description, "tags": {}},
        )


def link(
    b: Batch, target: Target, namespace: str, registered: str, aliases: Sequence[str] = ()
) -> None:
    aliases = [check_alias(a) for a in aliases]
    ensure_registered(b, namespace, registered)
    if b.state.get(LINKS, (namespace, registered, *_key(target))) is None:
        b.emit(
            "VersionLinked",
            registered_stream(namespace, registered),
            namespace,
            _link_data(registered, target),
        )
    for alias in aliases:
        set_alias(b, "registered", namespace, registered, alias, target)


def unlink(
    b: Batch, target: Target, namespace: str, registered: str, aliases: Sequence[str]
) -> None:
    """Unlinks a version, first removing the registered model's aliases that point at it."""
    if b.state.get(LINKS, (namespace, registered, *_key(target))) is None:
        raise NotFound(f"{target} is not linked to registered model {namespace}/{registered}")
    for alias in aliases:
        remove_alias(b, "registered", namespace, registered, alias)
    b.emit(
        "VersionUnlinked",
        registered_stream(namespace, registered),
        namespace,
        _link_data(registered, target),
    )


def open_run(
    b: Batch,
    namespace: str,
    model: str,
    name: str,
    config: Mapping[str, Any] | None,
    *,
    allow_config_change: bool = False,
    arch_hash: str | None = None,
) -> bool:
    """Starts a run, or resumes it when the name exists; returns True when resumed."""
    check_name(name, "run name")
    ensure_namespace(b, namespace)
    ensure_model(b, namespace, model, arch_hash)
    config = dict(config or {})
    digest = config_digest(config)
    existing: RunRow | None = b.state.get(RUNS, (namespace, model, name))
    stream = run_stream(namespace, model, name)
    if existing is None:
        b.emit(
            "RunStarted",
            stream,
            namespace,
            {
                "model": model,
                "run": name,
                "config": dumps(config),
                "config_digest": digest,
            },
        )
        return False
    changed = existing.config_digest != digest
    if changed and not allow_config_change:
        raise RunConfigConflict(
            f"run {name!r} of {namespace}/{model} started with config {existing.config}, "
            f"not {dumps(config)}: new training conditions need a new run name "
            "(or pass allow_config_change=True to resume anyway)"
        )
    b.emit(
        "RunResumed",
        stream,
        namespace,
        {
            "model": model,
            "run": name,
            "config_override": changed,
        },
    )
    return True


def finish_run(b: Batch, namespace: str, model: str, name: str, status: str) -> None:
    if status not in ("finished", "failed", "killed"):
        raise InvalidInput(f"run status {status!r} is invalid: use finished, failed or killed")
    b.emit(
        "RunFinished",
        run_stream(namespace, model, name),
        namespace,
        {"model": model, "run": name, "status": status},
    )


def metric_values(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics as floats under valid names, or the first that is not."""
    values: dict[str, float] = {}
    for key, value in metrics.items():
        check_metric_name(key)
        try:
            values[key] = float(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"metric {key}={value!r} is invalid: metrics are numbers") from None
    return values


def log_metrics(
    b: Batch, namespace: str, model: str, run: str, metrics: Mapping[str, float], step: int | None
) -> None:
    values = metric_values(metrics)
    b.emit(
        "MetricsLogged",
        run_stream(namespace, model, run),
        namespace,
        {"model": model, "run": run, "step": step, "metrics": values},
    )


INFERENCE_FIELDS = ("input_ids", "labels", "predictions", "losses", "confidences")


def record_inference(
    b: Batch,
    namespace: str,
    model: str,
    run: str,
    batch: Mapping[str, Any],
) -> None:
    """Records one traced batch on the run's inference stream. ``batch`` holds the
    payload's other fields (dataset_type, n_epoch, n_samples, num_classes and the packed
    per-sample arrays). The epoch fold reads no registry table, so the namespace rule and
    the run's existence are checked here, before emitting."""
    dataset_type = check_name(batch.get("dataset_type"), "dataset type")
    n_epoch = batch.get("n_epoch")
    if n_epoch is not None and (
        isinstance(n_epoch, bool) or not isinstance(n_epoch, int) or not 0 <= n_epoch < 2**31
    ):
        raise InvalidInput(f"n_epoch {n_epoch!r} is invalid: epochs are integers >= 0 or None")
    check_namespace_write(b.state, "InferenceBatchRecorded", namespace, b.actor)
    _existing_run(b, namespace, model, run)
    data = {
        "model": model,
        "run": run,
        "dataset_type": dataset_type,
        "n_epoch": n_epoch,
        "n_samples": batch.get("n_samples"),
        "num_classes": batch.get("num_classes"),
        **{name: batch.get(name) for name in INFERENCE_FIELDS},
    }
    b.emit("InferenceBatchRecorded", inference_stream(namespace, model, run), namespace, data)


def use_version(b: Batch, namespace: str, model: str, run: str, used: Target) -> None:
    b.emit(
        "VersionConsumed",
        run_stream(namespace, model, run),
        namespace,
        {
            "model": model,
            "run": run,
            "used_namespace": used.namespace,
            "used_model": used.model,
            "used_index": used.index,
        },
    )


def record_download(b: Batch, version: VersionRow, files: int, size: int, destination: str) -> None:
    b.emit(
        "VersionDownloaded",
        model_stream(version.namespace, version.model),
        version.namespace,
        {
            "model": version.model,
            "index": version.idx,
            "files": files,
            "bytes": size,
            "destination": destination,
        },
    )


def purge_blobs(b: Batch, version: VersionRow, digests: Sequence[str], reason: str) -> None:
    b.emit(
        "BlobsPurged",
        model_stream(version.namespace, version.model),
        version.namespace,
        {
            "model": version.model,
            "index": version.idx,
            "digests": sorted(digests),
            "reason": reason,
        },
    )


def _latest(b: Batch, model: ModelRow) -> VersionRow | None:
    if model.version_count == 0:
        return None
    row: VersionRow | None = b.state.get(
        VERSIONS, (model.namespace, model.name, model.version_count - 1)
    )
    return row


def _existing_run(b: Batch, namespace: str, model: str, run: str) -> None:
    if b.state.get(RUNS, (namespace, model, run)) is None:
        raise NotFound(f"run {run!r} of model {namespace}/{model} does not exist")


def _alias_target(
    b: Batch, owner_kind: str, namespace: str, owner: str, alias: str
) -> Target | None:
    row = b.state.get(ALIASES, (namespace, owner_kind, owner, alias))
    return None if row is None else Target(row.target_namespace, row.target_model, row.target_idx)


def _key(target: Target) -> tuple[str, str, int]:
    return (target.namespace, target.model, target.index)


def _link_data(registered: str, target: Target) -> dict[str, Any]:
    return {
        "registered": registered,
        "model_namespace": target.namespace,
        "model": target.model,
        "index": target.index,
    }


def _tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    result = {}
    for key, value in (tags or {}).items():
        check_name(key, "tag name")
        if not isinstance(value, str):
            raise InvalidInput(f"tag {key}={value!r} is invalid: tag values are strings")
        result[key] = value
    return result
