"""Where a registry lives and who is writing, from arguments first, then the environment.

| argument   | environment            | default                          |
|------------|------------------------|----------------------------------|
| home       | MODELTRAIL_HOME        | ./.modeltrail                    |
| db         | MODELTRAIL_DB          | sqlite:///<home>/trail.db        |
| blobs      | MODELTRAIL_BLOBS       | <home>/blobs                     |
| kafka      | MODELTRAIL_KAFKA       | none (the SQL log is the log)    |
| actor      | MODELTRAIL_ACTOR       | the login name                   |
| namespace  | MODELTRAIL_NAMESPACE   | the actor's personal namespace   |
| durability | MODELTRAIL_DURABILITY  | normal (or full: fsync per commit) |
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path

from modeltrail.core.refs import check_name, personal_namespace
from modeltrail.errors import InvalidInput


@dataclass(frozen=True)
class Settings:
    home: Path
    db: str
    blobs: Path
    kafka: str | None
    actor: str
    namespace: str
    durability: str
    kafka_prefix: str = "modeltrail"

    @classmethod
    def resolve(
        cls,
        home: str | os.PathLike[str] | None = None,
        *,
        db: str | None = None,
        blobs: str | os.PathLike[str] | None = None,
        kafka: str | None = None,
        actor: str | None = None,
        namespace: str | None = None,
        durability: str | None = None,
        kafka_prefix: str | None = None,
    ) -> Settings:
        env = os.environ
        home_path = Path(home or env.get("MODELTRAIL_HOME") or ".modeltrail").expanduser()
        actor = actor or env.get("MODELTRAIL_ACTOR") or _login()
        durability = durability or env.get("MODELTRAIL_DURABILITY") or "normal"
        if durability not in ("normal", "full"):
            raise InvalidInput(f"durability {durability!r} is invalid: use 'normal' or 'full'")
        return cls(
            home=home_path,
            db=db or env.get("MODELTRAIL_DB") or f"sqlite:///{home_path / 'trail.db'}",
            blobs=Path(blobs or env.get("MODELTRAIL_BLOBS") or home_path / "blobs"),
            kafka=kafka or env.get("MODELTRAIL_KAFKA") or None,
            actor=actor,
            namespace=check_name(
                namespace or env.get("MODELTRAIL_NAMESPACE") or personal_namespace(actor),
                "namespace",
            ),
            durability=durability,
            kafka_prefix=kafka_prefix or env.get("MODELTRAIL_KAFKA_PREFIX") or "modeltrail",
        )


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "anonymous"
