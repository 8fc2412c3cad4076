"""A run: one training condition of a model, for trainers.

``reg.run(model, name, config=…)`` starts it, or resumes it when the name exists with
the same config (another config raises ``RunConfigConflict``). Metrics, versions and
the versions the run used are recorded on the run's stream, so lineage knows which run
produced which version from which inputs.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from modeltrail.core import commands as cmd
from modeltrail.errors import InvalidInput

if TYPE_CHECKING:
    from modeltrail.entities import ModelVersion
    from modeltrail.producers.spool import Written
    from modeltrail.registry import Files, Registry


class Run:
    def __init__(
        self,
        registry: Registry,
        namespace: str,
        model: str,
        name: str,
        *,
        resumed: bool | None,
        opened_by: uuid.UUID | None = None,
    ) -> None:
        self.registry = registry
        self.namespace = namespace
        self.model = model
        self.name = name
        self.resumed = resumed
        """True when this run existed and was resumed by reusing its name; None when it
        was opened while the log could not be reached (decided when the spool flushes)."""
        self.opened_by = opened_by
        """The spool entry that opens this run, when it was opened offline."""

    @property
    def model_ref(self) -> str:
        return f"{self.namespace}/{self.model}"

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> bool:
        """Records scalar metrics at a step; the wall-clock time is the event's (the time
        of this call, even when the metrics wait in the spool). Returns False when the log
        could not be reached and they were spooled (``modeltrail.producers.spool``)."""
        values = cmd.metric_values(metrics)
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise InvalidInput(f"step {step!r} is invalid: steps are integers or None")
        return self._submit("metrics", {"metrics": values, "step": step}) is not None

    def log_version(
        self,
        files: Files,
        *,
        metadata: Mapping[str, Any] | None = None,
        aliases: Sequence[str] = (),
        epoch: int | None = None,
        arch_hash: str | None = None,
        derived_from: Sequence[str] = (),
    ) -> ModelVersion | None:
        """Logs a version of the run's model as produced by this run. Returns the version,
        or None when the log could not be reached: the version is then spooled behind
        the run's earlier writes (its files are already in the blob store)."""
        registry = self.registry
        files_in = registry._store_files(files, None)
        sources = [registry._target(r) for r in derived_from]
        written = self._submit(
            "version",
            {
                "files": [[f.path, f.size, f.sha256] for f in files_in],
                "metadata": dict(metadata or {}),
                "aliases": list(aliases),
                "epoch": epoch,
                "arch_hash": arch_hash,
                "derived_from": [[t.namespace, t.model, t.index] for t in sources],
            },
            checked=True,
        )
        return None if written is None else registry._get_target(written.result)

    def use(self, ref: str) -> ModelVersion:
        """Records that this run used a version (for lineage) and returns it; the record
        is spooled behind the run's earlier writes when the log cannot be reached."""
        version = self.registry.get(ref)
        self._submit("use", {"used": [version.namespace, version.model, version.index]})
        return version

    def finish(self, status: str = "finished") -> bool:
        """Ends the run (finished, failed or killed); spooled like metrics when the log
        cannot be reached."""
        if status not in ("finished", "failed", "killed"):
            raise InvalidInput(f"run status {status!r} is invalid: use finished, failed or killed")
        return self._submit("finish", {"status": status}) is not None

    def _submit(self, kind: str, args: dict[str, Any], *, checked: bool = False) -> Written | None:
        from modeltrail.producers.spool import offline_check, outbox_for

        outbox = outbox_for(self.registry)
        entry = outbox.entry(
            kind,
            self.namespace,
            {"model": self.model, "run": self.name, **args},
            requires=self.opened_by,
        )
        return outbox.submit(entry, check=offline_check(entry) if checked else None)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish("failed" if exc_type is not None else "finished")
