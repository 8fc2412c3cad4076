"""Every refusal modeltrail makes, as a small hierarchy of typed exceptions.

Each message names the offending value and the rule it broke, so a user can fix the
call without reading the source. The names follow PEP 249 where one fits.
"""

from __future__ import annotations


class ModeltrailError(Exception):
    """Base class of every error modeltrail raises on purpose."""


class InvalidName(ModeltrailError, ValueError):
    """A name, reference, alias or file path breaks a naming rule."""


class InvalidInput(ModeltrailError, ValueError):
    """An argument has the wrong shape or value (not a name: those raise InvalidName)."""


class NotFound(ModeltrailError, LookupError):
    """A referenced namespace, model, version, alias, run or registered model is absent."""


class AlreadyExists(ModeltrailError):
    """Something that must be unique already exists."""


class ArchitectureMismatch(ModeltrailError):
    """A model name is bound to another architecture hash than the one given."""


class RunConfigConflict(ModeltrailError):
    """A run name is reused with a different config than the one it started with."""


class ConcurrencyConflict(ModeltrailError):
    """Another writer got there first: a stream version or an expected alias target moved."""


class QuotaExceeded(ModeltrailError):
    """The namespace has reached its model quota."""


class IntegrityError(ModeltrailError):
    """Stored bytes do not match their digest, or an event or hash chain is corrupt."""


class PermissionDenied(ModeltrailError):
    """The actor may not write to this namespace."""


class UnknownSchema(IntegrityError):
    """An event carries a schema fingerprint that no known schema has."""


class LogUnavailable(ModeltrailError):
    """The event log cannot be reached (broker down, database locked past its timeout)."""


class ProjectionTimeout(ModeltrailError):
    """A batch is in the Kafka log, but the projection did not decide it in time: it takes
    effect (or is rejected) once a projector applies it. Resending it as a new command
    would record it twice; ask the registry later instead."""


class ReadOnly(ModeltrailError):
    """A write was attempted on a read-only registry (for example one built by as_of)."""


class PromotionRefused(PermissionDenied):
    """A promotion rule refuses an alias move: stages out of order, or a protected alias
    moved without force. ``rule`` names the rule; the other attributes name the move."""

    def __init__(
        self,
        message: str,
        *,
        rule: str = "",
        namespace: str = "",
        owner_kind: str = "",
        owner: str = "",
        alias: str = "",
        target: tuple[str, str, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.rule = rule
        self.namespace = namespace
        self.owner_kind = owner_kind
        self.owner = owner
        self.alias = alias
        self.target = target


__all__ = [
    "AlreadyExists",
    "ArchitectureMismatch",
    "ConcurrencyConflict",
    "IntegrityError",
    "InvalidInput",
    "InvalidName",
    "LogUnavailable",
    "ModeltrailError",
    "NotFound",
    "PermissionDenied",
    "ProjectionTimeout",
    "PromotionRefused",
    "QuotaExceeded",
    "ReadOnly",
    "RunConfigConflict",
    "UnknownSchema",
]
