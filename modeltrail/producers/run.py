"""A run: one training condition of a model, for trainers.

``reg.run(model, name, config=…)`` starts it, or resumes it when the name exists with
the same config (another config raises ``RunConfigConflict``). Metrics, versions and
the versions the run used are recorded on the run's stream, so lineage knows which run
produced which version from which inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from modeltrail.core import commands as cmd

if TYPE_CHECKING:
    from modeltrail.entities import ModelVersion
    from modeltrail.registry import Files, Registry


class Run:
    def __init__(
        self, registry: Registry, namespace: str, model: str, name: str, *, resumed: bool
    ) -> None:
        self.registry = registry
        self.namespace = namespace
        self.model = model
        self.name = name
        self.resumed = resumed
        """True when this run existed and was resumed by reusing its name."""

    @property
    def model_ref(self) -> str:
        return f"{self.namespace}/{self.model}"

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Records scalar metrics at a step; the wall-clock time is the event's."""
        self.registry._write(
            lambda b: cmd.log_metrics(b, self.namespace, self.model, self.name, metrics, step)
        )

    def log_version(
        self,
        files: Files,
        *,
        metadata: Mapping[str, Any] | None = None,
        aliases: Sequence[str] = (),
        epoch: int | None = None,
        arch_hash: str | None = None,
        derived_from: Sequence[str] = (),
    ) -> ModelVersion:
        """Logs a version of the run's model as produced by this run."""
        return self.registry.log_version(
            self.model_ref,
            files,
            metadata=metadata,
            aliases=aliases,
            run=self.name,
            epoch=epoch,
            arch_hash=arch_hash,
            derived_from=derived_from,
        )

    def use(self, ref: str) -> ModelVersion:
        """Records that this run used a version (for lineage) and returns it."""
        version = self.registry.get(ref)
        self.registry._write(
            lambda b: cmd.use_version(b, self.namespace, self.model, self.name, version.target)
        )
        return version

    def finish(self, status: str = "finished") -> None:
        self.registry._write(
            lambda b: cmd.finish_run(b, self.namespace, self.model, self.name, status)
        )

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish("failed" if exc_type is not None else "finished")
