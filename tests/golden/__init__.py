"""Golden events: one encoded event per event type and schema version, kept forever.

``python -m tests.golden`` writes a golden file for every schema that has none yet (run
it when a schema is added or evolves, and commit the file). Existing files are never
rewritten: they are what old logs contain.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

from modeltrail import schemas
from modeltrail.core.events.chain import event_hash
from modeltrail.core.events.codec import Codec, schema_fingerprint
from modeltrail.core.events.envelope import Event

HERE = Path(__file__).parent


def example(schema: Any, name: str = "value", named: dict[str, Any] | None = None) -> Any:
    """A deterministic value that exercises every field of a schema."""
    named = {} if named is None else named
    if isinstance(schema, list):
        return example(next(b for b in schema if b != "null"), name, named)
    if isinstance(schema, str):
        if schema in named:
            return example(named[schema], name, named)
        return {
            "string": f"example-{name}",
            "int": 7,
            "long": 1_234_567_890_123,
            "double": 0.25,
            "boolean": True,
            "bytes": b"\x00\x01\xfe",
            "null": None,
        }[schema]
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = schema
        return {f["name"]: example(f["type"], f["name"], named) for f in schema["fields"]}
    if kind == "enum":
        named[schema["name"]] = schema
        return schema["symbols"][-1]
    if kind == "array":
        return [example(schema["items"], name, named)]
    if kind == "map":
        return {"k": example(schema["values"], name, named)}
    return example(kind, name, named)


def golden_event(type_: str, raw_schema: dict[str, Any]) -> dict[str, Any]:
    codec = Codec({type_: raw_schema})
    data = example(raw_schema)
    fingerprint, payload = codec.encode(type_, data)
    assert fingerprint == schema_fingerprint(raw_schema)
    event_id = uuid.UUID(int=len(type_))
    envelope = {
        "event_id": str(event_id),
        "type": type_,
        "stream": f"model:golden/{type_}",
        "stream_version": 0,
        "namespace": "golden",
        "recorded_at": 1_767_225_600_000_000,
        "actor": "golden",
        "prev_hash": "",
    }
    digest = event_hash(
        event_id.bytes,
        type_,
        envelope["stream"],
        0,
        "golden",
        envelope["recorded_at"],
        "golden",
        b"",
        fingerprint,
        payload,
    )
    return {
        **envelope,
        "schema": fingerprint.hex(),
        "hash": digest.hex(),
        "payload": base64.b64encode(payload).decode(),
        "written": json.loads(json.dumps(data, default=lambda b: base64.b64encode(b).decode())),
    }


def load(path: Path) -> tuple[Event, dict[str, Any]]:
    raw = json.loads(path.read_text())
    event = Event(
        uuid.UUID(raw["event_id"]),
        raw["type"],
        raw["stream"],
        raw["stream_version"],
        raw["namespace"],
        raw["recorded_at"],
        raw["actor"],
        bytes.fromhex(raw["prev_hash"]),
        bytes.fromhex(raw["hash"]),
        bytes.fromhex(raw["schema"]),
        base64.b64decode(raw["payload"]),
    )
    return event, raw["written"]


def files() -> list[Path]:
    return sorted(HERE.glob("*.json"))


def write_missing() -> list[Path]:
    written = []
    for type_, raw in [*schemas.current().items(), *schemas.released()]:
        record = golden_event(type_, raw)
        path = HERE / f"{type_}.{record['schema']}.json"
        if not path.exists():
            path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            written.append(path)
    return written
