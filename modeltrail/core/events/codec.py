"""Avro payload codec: encode with the current schema, decode with whichever schema wrote.

Every schema is known by its 8-byte Rabin fingerprint (the Avro spec's CRC-64-AVRO of
the parsing canonical form). An event records the fingerprint of its writer schema; on
decode the codec finds that schema and, only when it differs from the current one,
resolves it into the current reader schema (resolution halves the decode rate, so the
common case skips it).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, cast

from modeltrail import schemas
from modeltrail.core.events.envelope import Event
from modeltrail.errors import IntegrityError, InvalidInput, UnknownSchema

MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
"""The largest payload one event may carry; larger data belongs in the blob store."""


# fastavro is imported where a codec is first built, not with this module: a command
# line that only reads the projections never encodes or decodes a payload.


def schema_fingerprint(raw: Mapping[str, Any]) -> bytes:
    from fastavro import parse_schema
    from fastavro.schema import fingerprint, to_parsing_canonical_form

    canonical = to_parsing_canonical_form(parse_schema(dict(raw), _write_hint=False))
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def _parsed(raw: Mapping[str, Any]) -> Any:
    # With the write hint fastavro knows the schema is parsed; without it, it parses the
    # schema again on every read and write (2.5x slower for a VersionLogged).
    from fastavro import parse_schema

    return parse_schema(dict(raw))


class Codec:
    """Encodes and decodes event payloads for a fixed set of schemas.

    The schemas are parsed on first use, not on construction: an engine always has a
    codec, and a command line that only reads never encodes or decodes (parsing them all
    is a fifth of such a process's start-up)."""

    def __init__(
        self,
        current: Mapping[str, Mapping[str, Any]],
        released: Sequence[tuple[str, Mapping[str, Any]]] = (),
    ) -> None:
        self._current = current
        self._released = released

    def __getattr__(self, name: str) -> Any:
        # Runs only while an attribute is missing: the first use parses, then the parsed
        # attributes are ordinary instance attributes (no cost on the hot path).
        if name not in ("_read", "_write", "_writers", "_by_fingerprint"):
            raise AttributeError(name)
        self._load()
        return self.__dict__[name]

    def _load(self) -> None:
        from fastavro import schemaless_reader, schemaless_writer

        writers: dict[str, tuple[bytes, Any]] = {}
        by_fingerprint: dict[bytes, tuple[str, Any]] = {}
        for type_, raw in self._current.items():
            fp, parsed = schema_fingerprint(raw), _parsed(raw)
            writers[type_] = (fp, parsed)
            by_fingerprint[fp] = (type_, parsed)
        for type_, raw in self._released:
            by_fingerprint.setdefault(schema_fingerprint(raw), (type_, _parsed(raw)))
        self._read = schemaless_reader
        self._write = schemaless_writer
        self._writers = writers
        self._by_fingerprint = by_fingerprint

    @property
    def types(self) -> frozenset[str]:
        return frozenset(self._writers)

    def fingerprint_of(self, type_: str) -> bytes:
        return self._writer(type_)[0]

    def encode(self, type_: str, data: Mapping[str, Any]) -> tuple[bytes, bytes]:
        """Returns (writer fingerprint, payload bytes)."""
        fp, parsed = self._writer(type_)
        buffer = io.BytesIO()
        try:
            self._write(buffer, parsed, data, strict_allow_default=True)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise InvalidInput(
                f"{type_} payload {dict(data)!r} does not fit its schema: {exc}"
            ) from exc
        payload = buffer.getvalue()
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise InvalidInput(
                f"{type_} payload of {len(payload):,} bytes is over the limit of "
                f"{MAX_PAYLOAD_BYTES:,} bytes per event; store large data as version files"
            )
        return fp, payload

    def decode(self, event: Event) -> dict[str, Any]:
        return self.decode_payload(event.type, event.schema, event.payload)

    def decode_payload(self, type_: str, fingerprint_: bytes, payload: bytes) -> dict[str, Any]:
        found = self._by_fingerprint.get(fingerprint_)
        if found is None:
            raise UnknownSchema(
                f"{type_} event has schema fingerprint {fingerprint_.hex()!r}, which no known "
                "schema has: it was written by a newer modeltrail, or the bytes are corrupt"
            )
        written_type, writer = found
        if written_type != type_:
            raise IntegrityError(
                f"event of type {type_!r} carries the schema fingerprint of {written_type!r}"
            )
        current_fp, reader = self._writers[type_]
        buffer = io.BytesIO(payload)
        try:
            data: Any = self._read(buffer, writer, None if fingerprint_ == current_fp else reader)
        except Exception as exc:  # fastavro raises many types on truncated or corrupt bytes
            raise IntegrityError(
                f"{type_} payload of {len(payload)} bytes does not decode with schema "
                f"{fingerprint_.hex()}: {type(exc).__name__}: {exc}"
            ) from exc
        if buffer.tell() != len(payload):
            raise IntegrityError(
                f"{type_} payload has {len(payload) - buffer.tell()} bytes after its last field: "
                "the bytes are corrupt"
            )
        return cast(dict[str, Any], data)

    def _writer(self, type_: str) -> tuple[bytes, Any]:
        try:
            return self._writers[type_]
        except KeyError:
            raise InvalidInput(
                f"unknown event type {type_!r}: known types are {', '.join(sorted(self._writers))}"
            ) from None


@cache
def default_codec() -> Codec:
    """The codec for the schemas shipped in ``modeltrail/schemas``."""
    return Codec(schemas.current(), schemas.released())
