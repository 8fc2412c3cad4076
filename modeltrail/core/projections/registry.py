"""The registry fold: namespaces, models, versions, aliases, registered models, runs.

Events carry what their command decided (a version's index, where an alias came
from), so each step here is a check that the decision still holds in log order and a
few row writes.
"""

from __future__ import annotations

import re
from typing import Any

from modeltrail.core.events.envelope import Event
from modeltrail.core.projections.fold import Projection, dumps
from modeltrail.core.projections.state import Spec, State
from modeltrail.core.projections.tables import (
    ALIASES,
    LINKS,
    METRICS,
    MODELS,
    NAMESPACES,
    REGISTERED,
    RUNS,
    VERSIONS,
    AliasRow,
    LinkRow,
    MetricRow,
    ModelRow,
    NamespaceRow,
    RegisteredRow,
    RunRow,
    VersionRow,
)
from modeltrail.errors import (
    AlreadyExists,
    ArchitectureMismatch,
    ConcurrencyConflict,
    InvalidName,
    NotFound,
    QuotaExceeded,
)

Data = dict[str, Any]
_RESERVED_ALIAS = re.compile(r"latest|v[0-9]+")


def namespace_created(state: State, e: Event, d: Data) -> None:
    if state.get(NAMESPACES, (d["name"],)) is not None:
        raise AlreadyExists(f"namespace {d['name']!r} already exists")
    state.put(
        NAMESPACES,
        NamespaceRow(d["name"], d["owner"], int(d["personal"]), None, 0, e.recorded_at, e.actor),
    )


def quota_set(state: State, e: Event, d: Data) -> None:
    state.put(NAMESPACES, _namespace(state, d["namespace"])._replace(max_models=d["max_models"]))


def model_created(state: State, e: Event, d: Data) -> None:
    ns, name = e.namespace, d["name"]
    if state.get(MODELS, (ns, name)) is not None:
        raise AlreadyExists(f"model {ns}/{name} already exists")
    if state.get(REGISTERED, (ns, name)) is not None:
        raise AlreadyExists(
            f"{ns}/{name} is a registered model: models and registered models share one "
            "name space per namespace"
        )
    namespace = _namespace(state, ns)
    if namespace.max_models is not None and namespace.model_count >= namespace.max_models:
        raise QuotaExceeded(
            f"model {ns}/{name} would be model {namespace.model_count + 1} of namespace {ns!r}, "
            f"whose quota is {namespace.max_models} models"
        )
    state.put(NAMESPACES, namespace._replace(model_count=namespace.model_count + 1))
    state.put(
        MODELS,
        ModelRow(
            ns,
            name,
            d["arch_hash"],
            d["description"],
            dumps(d["tags"]),
            0,
            e.recorded_at,
            e.actor,
            e.recorded_at,
        ),
    )


def version_logged(state: State, e: Event, d: Data) -> None:
    model = _model(state, e.namespace, d["model"])
    if d["index"] != model.version_count:
        raise ConcurrencyConflict(
            f"version v{d['index']} of {e.namespace}/{model.name} was decided on a stale state: "
            f"the next version is v{model.version_count}"
        )
    arch_hash = d["arch_hash"]
    if arch_hash is not None and model.arch_hash is not None and arch_hash != model.arch_hash:
        raise ArchitectureMismatch(
            f"architecture {arch_hash} differs from {model.arch_hash}, the one model "
            f"{e.namespace}/{model.name} is bound to: a new architecture needs a new model name"
        )
    if d["run"] is not None:
        _run(state, e.namespace, model.name, d["run"])
    files = sorted((f["path"], f["size"], f["sha256"]) for f in d["files"])
    state.put(
        MODELS,
        model._replace(
            version_count=model.version_count + 1,
            arch_hash=model.arch_hash or arch_hash,
            updated_at=e.recorded_at,
        ),
    )
    state.put(
        VERSIONS,
        VersionRow(
            e.namespace,
            model.name,
            d["index"],
            d["digest"],
            dumps(files),
            d["metadata"],
            d["run"],
            d["epoch"],
            arch_hash,
            "{}",
            e.recorded_at,
            e.actor,
            e.position,
            None,
        ),
    )


def alias_moved(state: State, e: Event, d: Data) -> None:
    key = (e.namespace, d["owner_kind"], d["owner"], d["alias"])
    if _RESERVED_ALIAS.fullmatch(d["alias"]):
        raise InvalidName(f"alias {d['alias']!r} is reserved and cannot be moved by hand")
    _owner(state, e.namespace, d["owner_kind"], d["owner"])
    _check_target(state, e.namespace, d)
    _check_alias_at(state, key, d["from_namespace"], d["from_model"], d["from_index"])
    state.put(
        ALIASES,
        AliasRow(
            *key,
            d["to_namespace"],
            d["to_model"],
            d["to_index"],
            e.recorded_at,
            e.actor,
            e.position,
        ),
    )


def alias_removed(state: State, e: Event, d: Data) -> None:
    key = (e.namespace, d["owner_kind"], d["owner"], d["alias"])
    if state.get(ALIASES, key) is None:
        raise NotFound(f"alias {d['alias']!r} of {e.namespace}/{d['owner']} is not set")
    _check_alias_at(state, key, d["from_namespace"], d["from_model"], d["from_index"])
    state.delete(ALIASES, key)


def tags_set(state: State, e: Event, d: Data) -> None:
    kind, ns, name = d["target_kind"], e.namespace, d["name"]
    if kind == "version":
        version = state.get(VERSIONS, (ns, name, d["index"]))
        if version is None:
            raise NotFound(f"version {ns}/{name}:v{d['index']} does not exist")
        state.put(VERSIONS, version._replace(tags=_merge_tags(version.tags, d)))
    elif kind == "model":
        model = _model(state, ns, name)
        state.put(MODELS, model._replace(tags=_merge_tags(model.tags, d), updated_at=e.recorded_at))
    else:
        registered = _registered(state, ns, name)
        state.put(REGISTERED, registered._replace(tags=_merge_tags(registered.tags, d)))


def registered_created(state: State, e: Event, d: Data) -> None:
    ns, name = e.namespace, d["name"]
    if state.get(REGISTERED, (ns, name)) is not None:
        raise AlreadyExists(f"registered model {ns}/{name} already exists")
    if state.get(MODELS, (ns, name)) is not None:
        raise AlreadyExists(
            f"{ns}/{name} is a model: models and registered models share one name space per "
            "namespace"
        )
    state.put(
        REGISTERED,
        RegisteredRow(ns, name, d["description"], dumps(d["tags"]), 0, e.recorded_at, e.actor),
    )


def version_linked(state: State, e: Event, d: Data) -> None:
    registered = _registered(state, e.namespace, d["registered"])
    key = (e.namespace, d["registered"], d["model_namespace"], d["model"], d["index"])
    if state.get(LINKS, key) is not None:
        raise AlreadyExists(
            f"{d['model_namespace']}/{d['model']}:v{d['index']} is already linked to "
            f"{e.namespace}/{d['registered']}"
        )
    if d["model_namespace"] == e.namespace:
        # Versions of other namespaces may sit in another partition of the log; the
        # command checked that they exist, and versions are never deleted.
        _version(state, e.namespace, d["model"], d["index"])
    state.put(REGISTERED, registered._replace(next_seq=registered.next_seq + 1))
    state.put(LINKS, LinkRow(*key, registered.next_seq, e.recorded_at, e.actor, e.position))


def version_unlinked(state: State, e: Event, d: Data) -> None:
    _registered(state, e.namespace, d["registered"])  # NotFound unless it exists
    key = (e.namespace, d["registered"], d["model_namespace"], d["model"], d["index"])
    if state.get(LINKS, key) is None:
        raise NotFound(
            f"{d['model_namespace']}/{d['model']}:v{d['index']} is not linked to "
            f"{e.namespace}/{d['registered']}"
        )
    state.delete(LINKS, key)


def run_started(state: State, e: Event, d: Data) -> None:
    _model(state, e.namespace, d["model"])
    if state.get(RUNS, (e.namespace, d["model"], d["run"])) is not None:
        raise AlreadyExists(f"run {d['run']!r} of {e.namespace}/{d['model']} already exists")
    state.put(
        RUNS,
        RunRow(
            e.namespace,
            d["model"],
            d["run"],
            d["config"],
            d["config_digest"],
            "running",
            0,
            e.recorded_at,
            e.actor,
            e.recorded_at,
        ),
    )


def run_resumed(state: State, e: Event, d: Data) -> None:
    run = _run(state, e.namespace, d["model"], d["run"])
    state.put(
        RUNS, run._replace(status="running", resumes=run.resumes + 1, updated_at=e.recorded_at)
    )


def run_finished(state: State, e: Event, d: Data) -> None:
    run = _run(state, e.namespace, d["model"], d["run"])
    state.put(RUNS, run._replace(status=d["status"], updated_at=e.recorded_at))


def metrics_logged(state: State, e: Event, d: Data) -> None:
    _run(state, e.namespace, d["model"], d["run"])
    for key, value in d["metrics"].items():
        state.put(
            METRICS,
            MetricRow(
                e.namespace, d["model"], d["run"], key, e.position, d["step"], value, e.recorded_at
            ),
        )


def blobs_purged(state: State, e: Event, d: Data) -> None:
    version = _version(state, e.namespace, d["model"], d["index"])
    state.put(VERSIONS, version._replace(purged_at=e.recorded_at))


def _merge_tags(current: str, d: Data) -> str:
    import json

    tags = {k: v for k, v in json.loads(current).items() if k not in set(d["removed"])}
    tags.update(d["set"])
    return dumps(tags)


def _check_target(state: State, ns: str, d: Data) -> None:
    target = (d["to_namespace"], d["to_model"], d["to_index"])
    if d["owner_kind"] == "model":
        if target[:2] != (ns, d["owner"]):
            raise InvalidName(f"alias of model {ns}/{d['owner']} must point at one of its versions")
        _version(state, *target)
    elif state.get(LINKS, (ns, d["owner"], *target)) is None:
        raise NotFound(
            f"{target[0]}/{target[1]}:v{target[2]} is not linked to registered model "
            f"{ns}/{d['owner']}: link it before giving it an alias there"
        )


def _check_alias_at(
    state: State, key: tuple[str, str, str, str], ns: str | None, model: str | None, idx: int | None
) -> None:
    current = state.get(ALIASES, key)
    where = (
        None
        if current is None
        else (current.target_namespace, current.target_model, current.target_idx)
    )
    claimed = None if model is None else (ns, model, idx)
    if where != claimed:
        raise ConcurrencyConflict(
            f"alias {key[3]!r} of {key[0]}/{key[2]} moved meanwhile: it is at {_label(where)}, "
            f"not at {_label(claimed)} as the command expected"
        )


def _label(target: tuple[Any, ...] | None) -> str:
    return "nothing" if target is None else f"{target[0]}/{target[1]}:v{target[2]}"


def _existing(state: State, spec: Spec, key: tuple[Any, ...], what: str) -> Any:
    row = state.get(spec, key)
    if row is None:
        raise NotFound(f"{what} does not exist")
    return row


def _namespace(state: State, ns: str) -> NamespaceRow:
    row: NamespaceRow = _existing(state, NAMESPACES, (ns,), f"namespace {ns!r}")
    return row


def _model(state: State, ns: str, name: str) -> ModelRow:
    row: ModelRow = _existing(state, MODELS, (ns, name), f"model {ns}/{name}")
    return row


def _version(state: State, ns: str, model: str, idx: int) -> VersionRow:
    row: VersionRow = _existing(state, VERSIONS, (ns, model, idx), f"version {ns}/{model}:v{idx}")
    return row


def _registered(state: State, ns: str, name: str) -> RegisteredRow:
    row: RegisteredRow = _existing(state, REGISTERED, (ns, name), f"registered model {ns}/{name}")
    return row


def _run(state: State, ns: str, model: str, name: str) -> RunRow:
    row: RunRow = _existing(state, RUNS, (ns, model, name), f"run {name!r} of model {ns}/{model}")
    return row


def _owner(state: State, ns: str, kind: str, name: str) -> None:
    if kind == "model":
        _model(state, ns, name)
    else:
        _registered(state, ns, name)


REGISTRY = Projection(
    "registry",
    (NAMESPACES, MODELS, VERSIONS, ALIASES, REGISTERED, LINKS, RUNS, METRICS),
    {
        "NamespaceCreated": namespace_created,
        "QuotaSet": quota_set,
        "ModelCreated": model_created,
        "VersionLogged": version_logged,
        "AliasMoved": alias_moved,
        "AliasRemoved": alias_removed,
        "TagsSet": tags_set,
        "RegisteredModelCreated": registered_created,
        "VersionLinked": version_linked,
        "VersionUnlinked": version_unlinked,
        "RunStarted": run_started,
        "RunResumed": run_resumed,
        "RunFinished": run_finished,
        "MetricsLogged": metrics_logged,
        "BlobsPurged": blobs_purged,
    },
)
