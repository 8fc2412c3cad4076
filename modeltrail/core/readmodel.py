"""Queries on the projection tables, returning their rows.

Everything here is plain SQL on a ``Query``, so the same code serves an embedded SQLite
home through the standard library, PostgreSQL through SQLAlchemy, a transaction that is
about to write, and the in-memory database that ``as_of`` builds.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from modeltrail.core.db import Query
from modeltrail.core.projections.state import Spec
from modeltrail.core.projections.tables import (
    ALIAS_MOVES,
    ALIASES,
    CONSUMED,
    DERIVED,
    LINKS,
    METRICS,
    MODELS,
    NAMESPACES,
    REGISTERED,
    RUNS,
    VERSIONS,
    AliasMoveRow,
    AliasRow,
    ConsumedRow,
    DerivedRow,
    LinkRow,
    MetricRow,
    ModelRow,
    NamespaceRow,
    RegisteredRow,
    RunRow,
    VersionRow,
)
from modeltrail.core.refs import LATEST, Ref, Target, version_index
from modeltrail.errors import NotFound


@cache
def _select(spec: Spec, where: tuple[str, ...], order: str) -> str:
    sql = f"SELECT {', '.join(spec.columns)} FROM {spec.name}"
    if where:
        sql += " WHERE " + " AND ".join(f"{column} = ?" for column in where)
    return sql + (f" ORDER BY {order}" if order else "")


class ReadModel:
    def __init__(self, query: Query) -> None:
        self.query = query

    def get(self, spec: Spec, *key: Any) -> Any:
        found = self.query.one(spec.select_sql, key)
        return None if found is None else spec.row._make(found)

    def where(self, spec: Spec, order: str = "", **equal: Any) -> list[Any]:
        sql = _select(spec, tuple(equal), order)
        return [spec.row._make(r) for r in self.query.rows(sql, tuple(equal.values()))]

    # namespaces and models

    def namespace(self, name: str) -> NamespaceRow | None:
        row: NamespaceRow | None = self.get(NAMESPACES, name)
        return row

    def model(self, namespace: str, name: str) -> ModelRow | None:
        row: ModelRow | None = self.get(MODELS, namespace, name)
        return row

    def models(self, namespace: str | None = None) -> list[ModelRow]:
        if namespace is None:
            return self.where(MODELS, order="namespace, name")
        return self.where(MODELS, order="name", namespace=namespace)

    def version(self, target: Target) -> VersionRow | None:
        row: VersionRow | None = self.get(VERSIONS, target.namespace, target.model, target.index)
        return row

    def versions(self, namespace: str, model: str) -> list[VersionRow]:
        return self.where(VERSIONS, order="idx", namespace=namespace, model=model)

    # aliases

    def alias(self, namespace: str, kind: str, owner: str, alias: str) -> AliasRow | None:
        row: AliasRow | None = self.get(ALIASES, namespace, kind, owner, alias)
        return row

    def aliases_of(self, namespace: str, kind: str, owner: str) -> list[AliasRow]:
        return self.where(ALIASES, order="alias", namespace=namespace, owner_kind=kind, owner=owner)

    def aliases_at(self, target: Target) -> list[AliasRow]:
        return self.where(
            ALIASES,
            order="namespace, owner_kind, owner, alias",
            target_namespace=target.namespace,
            target_model=target.model,
            target_idx=target.index,
        )

    def alias_moves(self, namespace: str, kind: str, owner: str, alias: str) -> list[AliasMoveRow]:
        return self.where(
            ALIAS_MOVES,
            order="position",
            namespace=namespace,
            owner_kind=kind,
            owner=owner,
            alias=alias,
        )

    # registered models

    def registered(self, namespace: str, name: str) -> RegisteredRow | None:
        row: RegisteredRow | None = self.get(REGISTERED, namespace, name)
        return row

    def registered_models(self, namespace: str | None = None) -> list[RegisteredRow]:
        if namespace is None:
            return self.where(REGISTERED, order="namespace, name")
        return self.where(REGISTERED, order="name", namespace=namespace)

    def links(self, namespace: str, registered: str) -> list[LinkRow]:
        return self.where(LINKS, order="seq", namespace=namespace, registered=registered)

    def last_link(self, namespace: str, registered: str) -> LinkRow | None:
        """The link made last (the registered model's ``latest``)."""
        found = self.query.one(
            _select(LINKS, ("namespace", "registered"), "seq DESC") + " LIMIT 1",
            (namespace, registered),
        )
        return None if found is None else LinkRow._make(found)

    def link_seq(self, namespace: str, registered: str, seq: int) -> LinkRow | None:
        found = self.where(LINKS, namespace=namespace, registered=registered, seq=seq)
        return found[0] if found else None

    def links_to(self, target: Target) -> list[LinkRow]:
        return self.where(
            LINKS,
            order="namespace, registered",
            model_namespace=target.namespace,
            model=target.model,
            idx=target.index,
        )

    # runs and lineage

    def run(self, namespace: str, model: str, name: str) -> RunRow | None:
        row: RunRow | None = self.get(RUNS, namespace, model, name)
        return row

    def runs(self, namespace: str, model: str) -> list[RunRow]:
        return self.where(RUNS, order="started_at, name", namespace=namespace, model=model)

    def metrics(self, namespace: str, model: str, run: str) -> list[MetricRow]:
        return self.where(METRICS, order="position, key", namespace=namespace, model=model, run=run)

    def consumed_by(self, namespace: str, model: str, run: str) -> list[ConsumedRow]:
        return self.where(CONSUMED, order="at", namespace=namespace, model=model, run=run)

    def consumers_of(self, target: Target) -> list[ConsumedRow]:
        return self.where(
            CONSUMED,
            order="at",
            used_namespace=target.namespace,
            used_model=target.model,
            used_idx=target.index,
        )

    def derived_from(self, target: Target) -> list[DerivedRow]:
        return self.where(
            DERIVED,
            order="from_namespace, from_model, from_idx",
            namespace=target.namespace,
            model=target.model,
            idx=target.index,
        )

    def derivatives_of(self, target: Target) -> list[DerivedRow]:
        return self.where(
            DERIVED,
            order="namespace, model, idx",
            from_namespace=target.namespace,
            from_model=target.model,
            from_idx=target.index,
        )

    # references

    def resolve(self, ref: Ref) -> Target:
        """The model version a reference names, following model or registered aliases."""
        namespace = ref.ns
        model = self.model(namespace, ref.name)
        if model is not None:
            return self._resolve_in_model(model, ref)
        registered = self.registered(namespace, ref.name)
        if registered is not None:
            return self._resolve_in_registered(registered, ref)
        raise NotFound(f"{namespace}/{ref.name} is neither a model nor a registered model")

    def _resolve_in_model(self, model: ModelRow, ref: Ref) -> Target:
        name = f"{model.namespace}/{model.name}"
        if ref.selector == LATEST:
            if model.version_count == 0:
                raise NotFound(f"model {name} has no versions yet")
            return Target(model.namespace, model.name, model.version_count - 1)
        index = version_index(ref.selector)
        if index is not None:
            if index >= model.version_count:
                raise NotFound(
                    f"version {ref.selector} of model {name} does not exist "
                    f"(it has v0…v{model.version_count - 1})"
                    if model.version_count
                    else f"version {ref.selector} of model {name} does not exist (it has none)"
                )
            return Target(model.namespace, model.name, index)
        alias = self.alias(model.namespace, "model", model.name, ref.selector)
        if alias is None:
            raise NotFound(f"model {name} has no alias {ref.selector!r}")
        return Target(alias.target_namespace, alias.target_model, alias.target_idx)

    def _resolve_in_registered(self, registered: RegisteredRow, ref: Ref) -> Target:
        name = f"{registered.namespace}/{registered.name}"
        link: LinkRow | None
        if ref.selector == LATEST:
            link = self.last_link(registered.namespace, registered.name)
            if link is None:
                raise NotFound(f"registered model {name} has no linked versions")
        elif (index := version_index(ref.selector)) is not None:
            link = self.link_seq(registered.namespace, registered.name, index)
            if link is None:
                raise NotFound(f"registered model {name} has no linked version {ref.selector}")
        else:
            alias = self.alias(registered.namespace, "registered", registered.name, ref.selector)
            if alias is None:
                raise NotFound(f"registered model {name} has no alias {ref.selector!r}")
            return Target(alias.target_namespace, alias.target_model, alias.target_idx)
        return Target(link.model_namespace, link.model, link.idx)
