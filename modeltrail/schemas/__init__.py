"""Avro payload schemas, one ``<Type>.avsc`` per event type, as package data.

``<Type>.avsc`` is the schema producers write today. When a schema evolves, the version
it replaces is first copied to ``released/<Type>.<n>.avsc``: every schema ever released
stays here so that events written with it always decode.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

Schema = dict[str, Any]


def _read(path: Any) -> Schema:
    schema: Schema = json.loads(path.read_text(encoding="utf-8"))
    return schema


@cache
def current() -> dict[str, Schema]:
    """The schema each event type is written with now, by type name."""
    root = resources.files(__name__)
    return {
        entry.name.removesuffix(".avsc"): _read(entry)
        for entry in root.iterdir()
        if entry.name.endswith(".avsc")
    }


@cache
def released() -> list[tuple[str, Schema]]:
    """Every earlier schema version still in the repository, as (type, schema)."""
    root = resources.files(__name__).joinpath("released")
    found = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".avsc"):
            found.append((entry.name.split(".")[0], _read(entry)))
    return found
