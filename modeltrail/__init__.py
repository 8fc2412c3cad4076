"""modeltrail: an event-sourced model registry.

import modeltrail as mt
reg = mt.open()                       # ./.modeltrail, an embedded SQLite home
v = reg.log_version("resnet", "weights/", aliases=["candidate"])
reg.set_alias("resnet:v0", "production")
reg.alias_history("resnet", "production")
"""

from modeltrail import errors
from modeltrail.core.events.envelope import Event
from modeltrail.core.events.log import VerifyReport
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
from modeltrail.registry import Registry, open

__version__ = "0.1.0"

__all__ = [
    "AliasMove",
    "Event",
    "FileInfo",
    "Lineage",
    "Link",
    "Model",
    "ModelVersion",
    "RegisteredModel",
    "Registry",
    "RunInfo",
    "VerifyReport",
    "VersionDiff",
    "errors",
    "open",
]
