"""The Avro codec: round trips for every schema, evolution, and bytes that must not decode."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeltrail import schemas
from modeltrail.core.events.chain import expected_hash
from modeltrail.core.events.codec import MAX_PAYLOAD_BYTES, Codec, default_codec
from modeltrail.core.events.envelope import Event
from modeltrail.errors import IntegrityError, InvalidInput, UnknownSchema
from tests import golden
from tests.avro_strategies import values

TYPES = sorted(schemas.current())


def _event(type_: str, fingerprint: bytes, payload: bytes) -> Event:
    return Event(uuid.uuid4(), type_, "s", 0, "ns", 0, "a", b"", b"", fingerprint, payload)


@pytest.mark.parametrize("type_", TYPES)
@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_payload_round_trips(type_: str, data: st.DataObject) -> None:
    codec = default_codec()
    value = data.draw(values(copy.deepcopy(schemas.current()[type_])))
    fingerprint, payload = codec.encode(type_, value)
    assert codec.decode_payload(type_, fingerprint, payload) == value


def test_the_design_names_a_schema_for_every_event_type() -> None:
    design_types = {
        "NamespaceCreated",
        "QuotaSet",
        "ModelCreated",
        "VersionLogged",
        "AliasMoved",
        "AliasRemoved",
        "TagsSet",
        "RegisteredModelCreated",
        "VersionLinked",
        "VersionUnlinked",
        "RunStarted",
        "RunResumed",
        "RunFinished",
        "MetricsLogged",
        "InferenceBatchRecorded",
        "VersionConsumed",
        "VersionDownloaded",
        "BlobsPurged",
    }
    assert design_types <= set(TYPES)


def test_an_unknown_fingerprint_is_a_clear_error() -> None:
    codec = default_codec()
    _, payload = codec.encode("QuotaSet", {"namespace": "n", "max_models": 3})
    with pytest.raises(UnknownSchema, match="0011223344556677"):
        codec.decode(_event("QuotaSet", bytes.fromhex("0011223344556677"), payload))


@pytest.mark.parametrize("cut", [1, 3])
def test_truncated_payload_is_an_integrity_error(cut: int) -> None:
    codec = default_codec()
    fingerprint, payload = codec.encode(
        "ModelCreated", {"name": "m", "arch_hash": "abc", "description": None, "tags": {}}
    )
    with pytest.raises(IntegrityError, match="does not decode"):
        codec.decode_payload("ModelCreated", fingerprint, payload[:-cut])


def test_trailing_garbage_is_an_integrity_error() -> None:
    codec = default_codec()
    fingerprint, payload = codec.encode("QuotaSet", {"namespace": "n", "max_models": None})
    with pytest.raises(IntegrityError, match="after its last field"):
        codec.decode_payload("QuotaSet", fingerprint, payload + b"\x00")


def test_a_payload_of_another_type_is_refused() -> None:
    codec = default_codec()
    fingerprint, payload = codec.encode("QuotaSet", {"namespace": "n", "max_models": None})
    with pytest.raises(IntegrityError, match="QuotaSet"):
        codec.decode_payload("ModelCreated", fingerprint, payload)


def test_data_that_does_not_fit_names_the_type() -> None:
    with pytest.raises(InvalidInput, match="QuotaSet"):
        default_codec().encode("QuotaSet", {"namespace": 5, "max_models": "many"})


def test_oversize_payloads_are_refused_before_they_reach_the_log() -> None:
    big = {
        "model": "m",
        "index": 0,
        "files": [],
        "digest": "d" * (MAX_PAYLOAD_BYTES + 1),
        "metadata": "{}",
        "run": None,
        "epoch": None,
        "arch_hash": None,
        "derived_from": [],
    }
    with pytest.raises(InvalidInput, match="over the limit"):
        default_codec().encode("VersionLogged", big)


def test_events_written_with_an_older_schema_decode_with_the_new_one() -> None:
    current = copy.deepcopy(schemas.current()["RunFinished"])
    old = copy.deepcopy(current)
    old["fields"] = [f for f in old["fields"] if f["name"] != "status"]  # status came later
    writer = Codec({"RunFinished": old})
    fingerprint, payload = writer.encode("RunFinished", {"model": "m", "run": "r"})
    reader = Codec({"RunFinished": current}, [("RunFinished", old)])
    assert reader.decode_payload("RunFinished", fingerprint, payload) == {
        "model": "m",
        "run": "r",
        "status": "finished",
    }


def test_every_schema_version_has_a_golden_event() -> None:
    have = {
        path.name.rsplit(".", 2)[0] + "." + path.name.rsplit(".", 2)[1] for path in golden.files()
    }
    codec = default_codec()
    missing = [t for t in TYPES if f"{t}.{codec.fingerprint_of(t).hex()}" not in have]
    assert not missing, f"run `python -m tests.golden` to add golden events for {missing}"


@pytest.mark.parametrize("path", golden.files(), ids=lambda p: p.stem)
def test_golden_events_decode_with_the_current_reader(path: Any) -> None:
    event, written = golden.load(path)
    assert expected_hash(event) == event.hash, "the hash function changed: old chains would break"
    decoded = default_codec().decode(event)
    encoded_written = {k: v for k, v in decoded.items() if k in written}
    assert set(written) <= set(decoded)
    assert _jsonish(encoded_written) == written


def _jsonish(value: Any) -> Any:
    import base64
    import json

    return json.loads(json.dumps(value, default=lambda b: base64.b64encode(b).decode()))
