"""The rows of every projection table, as plain NamedTuples.

These are private to the engine: the public entities (``Model``, ``ModelVersion`` …)
are built from them by the read model, so storage can change without the API changing.
Times are UTC microseconds; JSON columns hold objects with sorted keys so that a rebuild
writes byte-identical text. Key columns are never None (sorting and SQL uniqueness
both need that).
"""

from __future__ import annotations

from typing import NamedTuple

from modeltrail.core.projections.state import Spec


class NamespaceRow(NamedTuple):
    name: str
    owner: str
    personal: int
    max_models: int | None
    model_count: int
    created_at: int
    created_by: str


class ModelRow(NamedTuple):
    namespace: str
    name: str
    arch_hash: str | None
    description: str | None
    tags: str
    version_count: int
    created_at: int
    created_by: str
    updated_at: int


class VersionRow(NamedTuple):
    namespace: str
    model: str
    idx: int
    digest: str
    files: str
    metadata: str
    run: str | None
    epoch: int | None
    arch_hash: str | None
    tags: str
    created_at: int
    created_by: str
    position: int
    purged_at: int | None


class AliasRow(NamedTuple):
    namespace: str
    owner_kind: str
    owner: str
    alias: str
    target_namespace: str
    target_model: str
    target_idx: int
    moved_at: int
    moved_by: str
    position: int


class AliasMoveRow(NamedTuple):
    namespace: str
    owner_kind: str
    owner: str
    alias: str
    position: int
    from_namespace: str | None
    from_model: str | None
    from_idx: int | None
    to_namespace: str | None
    to_model: str | None
    to_idx: int | None
    at: int
    actor: str


class RegisteredRow(NamedTuple):
    namespace: str
    name: str
    description: str | None
    tags: str
    next_seq: int
    created_at: int
    created_by: str


class LinkRow(NamedTuple):
    namespace: str
    registered: str
    model_namespace: str
    model: str
    idx: int
    seq: int
    linked_at: int
    linked_by: str
    position: int


class RunRow(NamedTuple):
    namespace: str
    model: str
    name: str
    config: str
    config_digest: str
    status: str
    resumes: int
    started_at: int
    started_by: str
    updated_at: int


class MetricRow(NamedTuple):
    namespace: str
    model: str
    run: str
    key: str
    position: int
    step: int | None
    value: float
    at: int


class ConsumedRow(NamedTuple):
    namespace: str
    model: str
    run: str
    used_namespace: str
    used_model: str
    used_idx: int
    at: int


class DerivedRow(NamedTuple):
    namespace: str
    model: str
    idx: int
    from_namespace: str
    from_model: str
    from_idx: int


class StreamHeadRow(NamedTuple):
    stream: str
    version: int
    hash: bytes


class RejectionRow(NamedTuple):
    partition: str
    position: int
    event_id: bytes
    stream: str
    type: str
    reason: str


class CheckpointRow(NamedTuple):
    name: str
    partition: str
    position: int


NAMESPACES = Spec("namespaces", NamespaceRow, ("name",))
MODELS = Spec("models", ModelRow, ("namespace", "name"))
VERSIONS = Spec("versions", VersionRow, ("namespace", "model", "idx"), (("namespace", "run"),))
ALIASES = Spec(
    "aliases",
    AliasRow,
    ("namespace", "owner_kind", "owner", "alias"),
    (("target_namespace", "target_model", "target_idx"),),
)
ALIAS_MOVES = Spec(
    "alias_moves", AliasMoveRow, ("namespace", "owner_kind", "owner", "alias", "position")
)
REGISTERED = Spec("registered_models", RegisteredRow, ("namespace", "name"))
LINKS = Spec(
    "links",
    LinkRow,
    ("namespace", "registered", "model_namespace", "model", "idx"),
    (("model_namespace", "model", "idx"), ("namespace", "registered", "seq")),
)
RUNS = Spec("runs", RunRow, ("namespace", "model", "name"))
METRICS = Spec("metrics", MetricRow, ("namespace", "model", "run", "key", "position"))
CONSUMED = Spec(
    "consumed",
    ConsumedRow,
    ("namespace", "model", "run", "used_namespace", "used_model", "used_idx"),
    (("used_namespace", "used_model", "used_idx"),),
)
DERIVED = Spec(
    "derived",
    DerivedRow,
    ("namespace", "model", "idx", "from_namespace", "from_model", "from_idx"),
    (("from_namespace", "from_model", "from_idx"),),
)
STREAM_HEADS = Spec("stream_heads", StreamHeadRow, ("stream",))
REJECTIONS = Spec("rejections", RejectionRow, ("partition", "position"))
CHECKPOINTS = Spec("checkpoints", CheckpointRow, ("name", "partition"))
