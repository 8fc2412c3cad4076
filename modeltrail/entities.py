"""The public entities: frozen snapshots of what the registry held when they were read."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from modeltrail.core.events.envelope import to_datetime
from modeltrail.core.projections.tables import (
    AliasMoveRow,
    LinkRow,
    ModelRow,
    RegisteredRow,
    RunRow,
    VersionRow,
)
from modeltrail.core.refs import Target, version_label

if TYPE_CHECKING:
    from modeltrail.registry import Registry


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelVersion:
    namespace: str
    model: str
    index: int
    files: tuple[FileInfo, ...]
    metadata: dict[str, Any]
    aliases: tuple[str, ...]
    created_at: datetime
    actor: str
    digest: str
    run: str | None
    epoch: int | None
    arch_hash: str | None
    tags: dict[str, str]
    purged: bool
    position: int

    @property
    def label(self) -> str:
        return version_label(self.index)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.model}:{self.label}"

    @property
    def target(self) -> Target:
        return Target(self.namespace, self.model, self.index)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @classmethod
    def from_row(cls, row: VersionRow, aliases: list[str]) -> ModelVersion:
        return cls(
            row.namespace,
            row.model,
            row.idx,
            tuple(FileInfo(p, s, h) for p, s, h in json.loads(row.files)),
            json.loads(row.metadata),
            tuple(aliases),
            to_datetime(row.created_at),
            row.created_by,
            row.digest,
            row.run,
            row.epoch,
            row.arch_hash,
            json.loads(row.tags),
            row.purged_at is not None,
            row.position,
        )


@dataclass(frozen=True)
class Model:
    namespace: str
    name: str
    arch_hash: str | None
    description: str | None
    tags: dict[str, str]
    version_count: int
    aliases: dict[str, str]
    """alias -> version label, ``latest`` included when the model has a version"""
    created_at: datetime
    actor: str
    _registry: Registry = field(repr=False, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def versions(self) -> list[ModelVersion]:
        return self._registry.versions(self.ref)

    @classmethod
    def from_row(cls, row: ModelRow, aliases: dict[str, str], registry: Registry) -> Model:
        return cls(
            row.namespace,
            row.name,
            row.arch_hash,
            row.description,
            json.loads(row.tags),
            row.version_count,
            aliases,
            to_datetime(row.created_at),
            row.created_by,
            registry,
        )


@dataclass(frozen=True)
class AliasMove:
    alias: str
    from_label: str | None
    to_label: str | None
    """None when the alias was removed"""
    at: datetime
    actor: str
    position: int
    from_ref: str | None
    to_ref: str | None

    @classmethod
    def from_row(cls, row: AliasMoveRow) -> AliasMove:
        def ref(ns: str | None, model: str | None, idx: int | None) -> str | None:
            return None if model is None or idx is None else f"{ns}/{model}:{version_label(idx)}"

        def label(idx: int | None) -> str | None:
            return None if idx is None else version_label(idx)

        return cls(
            row.alias,
            label(row.from_idx),
            label(row.to_idx),
            to_datetime(row.at),
            row.actor,
            row.position,
            ref(row.from_namespace, row.from_model, row.from_idx),
            ref(row.to_namespace, row.to_model, row.to_idx),
        )


@dataclass(frozen=True)
class Link:
    """A version linked into a registered model; ``label`` is its number there."""

    registered: str
    label: str
    ref: str
    linked_at: datetime
    actor: str

    @classmethod
    def from_row(cls, row: LinkRow) -> Link:
        return cls(
            f"{row.namespace}/{row.registered}",
            version_label(row.seq),
            str(Target(row.model_namespace, row.model, row.idx)),
            to_datetime(row.linked_at),
            row.linked_by,
        )


@dataclass(frozen=True)
class RegisteredModel:
    namespace: str
    name: str
    description: str | None
    tags: dict[str, str]
    aliases: dict[str, str]
    """alias -> version reference (``ns/model:vN``)"""
    created_at: datetime
    actor: str
    _registry: Registry = field(repr=False, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def links(self) -> list[Link]:
        return self._registry.links(self.ref)

    @classmethod
    def from_row(
        cls, row: RegisteredRow, aliases: dict[str, str], registry: Registry
    ) -> RegisteredModel:
        return cls(
            row.namespace,
            row.name,
            row.description,
            json.loads(row.tags),
            aliases,
            to_datetime(row.created_at),
            row.created_by,
            registry,
        )


@dataclass(frozen=True)
class RunInfo:
    namespace: str
    model: str
    name: str
    config: dict[str, Any]
    status: str
    resumes: int
    started_at: datetime
    actor: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.model}/{self.name}"

    @classmethod
    def from_row(cls, row: RunRow) -> RunInfo:
        return cls(
            row.namespace,
            row.model,
            row.name,
            json.loads(row.config),
            row.status,
            row.resumes,
            to_datetime(row.started_at),
            row.started_by,
        )


@dataclass(frozen=True)
class VersionDiff:
    a: str
    b: str
    added: list[str]
    removed: list[str]
    changed: list[str]
    metadata: dict[str, tuple[Any, Any]]
    """key -> (value in a, value in b); a missing side is None"""

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed or self.metadata)


@dataclass(frozen=True)
class Lineage:
    """Where a version came from and where it went."""

    version: str
    run: RunInfo | None
    """the run that produced the version"""
    inputs: list[str]
    """versions the producing run used"""
    derived_from: list[str]
    derivatives: list[str]
    """versions derived from this one"""
    consumers: list[str]
    """runs (``ns/model/run``) that used this version"""
    registered: list[str]
    """registered models the version is linked into"""
