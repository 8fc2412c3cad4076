"""The auditor's commands end to end: audit (JSON Lines, CSV, filters), replay, verify."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import struct
from pathlib import Path

import pytest

import modeltrail as mt
from modeltrail.core import commands as cmd
from modeltrail.core.batch import Batch
from tests.conftest import ManualClock
from tests.helpers import cli as _cli

HOUR = 3600.0


@pytest.fixture
def history(home: Path, clock: ManualClock) -> dict[str, int]:
    """alice logs and promotes; an hour later bob moves production back; positions kept."""
    marks: dict[str, int] = {}
    with mt.open(home, actor="alice", namespace="team", clock=clock) as alice:
        alice.log_version("m", {"w": b"0"})
        alice.log_version("m", {"w": b"1"})
        alice.set_alias("m:v1", "production")
        marks["promoted"] = alice.head()
    clock.advance(HOUR)
    with mt.open(home, actor="bob", namespace="team", clock=clock) as bob:
        bob.set_alias("m:v0", "production")
        bob.link("m:v0", "classifier", aliases=["staging"])
        marks["end"] = bob.head()
    return marks


def test_audit_filters_by_actor_type_and_time_as_json_lines(
    home: Path, history: dict[str, int]
) -> None:
    everything = _cli(home, "audit", "--format", "jsonl")
    assert everything.exit_code == 0
    lines = [json.loads(line) for line in everything.output.splitlines()]
    assert [e["position"] for e in lines] == list(range(1, history["end"] + 1))

    by_bob = _cli(home, "audit", "--actor", "bob", "--type", "AliasMoved", "--json")
    moves = [json.loads(line) for line in by_bob.output.splitlines()]
    assert [(m["actor"], m["data"]["alias"], m["data"]["to_index"]) for m in moves] == [
        ("bob", "production", 0),
        ("bob", "staging", 0),
    ]
    late = _cli(home, "audit", "--since", "2026-01-01T00:30:00", "--format", "jsonl")
    assert {json.loads(line)["actor"] for line in late.output.splitlines()} == {"bob"}
    early = _cli(home, "audit", "--until", "2026-01-01T00:30:00+00:00", "--format", "jsonl")
    assert {json.loads(line)["actor"] for line in early.output.splitlines()} == {"alice"}
    none = _cli(home, "audit", "--namespace", "elsewhere", "--format", "jsonl")
    assert none.output == ""


def test_audit_exports_csv_with_the_payload(home: Path, history: dict[str, int]) -> None:
    result = _cli(home, "audit", "--type", "AliasMoved", "--format", "csv")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["actor"] for r in rows] == ["alice", "bob", "bob"]
    assert [r["type"] for r in rows] == ["AliasMoved"] * 3
    assert json.loads(rows[0]["data"])["to_index"] == 1
    assert rows[0]["recorded"] == "2026-01-01 00:00:00"


def test_audit_exports_events_whose_payload_holds_bytes(home: Path, clock: ManualClock) -> None:
    with mt.open(home, actor="alice", namespace="team", clock=clock) as reg:
        reg.run("m", "r1").finish()

        def record(b: Batch) -> None:
            cmd.record_inference(
                b,
                "team",
                "m",
                "r1",
                {
                    "dataset_type": "train",
                    "n_epoch": 0,
                    "n_samples": 2,
                    "num_classes": 2,
                    "input_ids": struct.pack("<2q", 1, 2),
                    "labels": struct.pack("<2i", 0, 1),
                    "predictions": struct.pack("<2i", 0, 0),
                    "losses": struct.pack("<2f", 0.1, 0.9),
                    "confidences": struct.pack("<2f", 0.9, 0.6),
                },
            )

        reg._write(record)
    for fmt in ("jsonl", "csv"):
        result = _cli(home, "audit", "--type", "InferenceBatchRecorded", "--format", fmt)
        assert result.exit_code == 0, result.output
        assert struct.pack("<2q", 1, 2).hex() in result.output
    events = _cli(home, "events", "--json")
    assert events.exit_code == 0
    assert "InferenceBatchRecorded" in events.output


def test_replay_prints_the_registry_as_it_was(home: Path, history: dict[str, int]) -> None:
    at_promotion = _cli(home, "replay", "--as-of", str(history["promoted"]), "--json")
    assert at_promotion.exit_code == 0
    past = json.loads(at_promotion.output)
    assert past["position"] == history["promoted"]
    [model] = past["models"]
    assert model["aliases"] == {"production": "v1", "latest": "v1"}
    assert past["registered"] == []

    by_time = _cli(home, "replay", "--as-of", "2026-01-01T00:30:00Z")
    assert by_time.exit_code == 0
    assert f"as of position {history['promoted']}" in by_time.output
    assert "production:v1" in by_time.output

    now = json.loads(_cli(home, "replay", "--as-of", str(history["end"]), "--json").output)
    assert now["models"][0]["aliases"]["production"] == "v0"
    assert now["registered"][0]["aliases"] == {"staging": "team/m:v0"}

    before = json.loads(_cli(home, "replay", "--as-of", "2025-12-31T00:00:00", "--json").output)
    assert (before["position"], before["models"]) == (0, [])
    bad = _cli(home, "replay", "--as-of", "yesterday")
    assert bad.exit_code == 2
    assert "'yesterday' is not an ISO 8601 time" in bad.output


def test_verify_passes_then_fails_on_a_tampered_payload(
    home: Path, history: dict[str, int]
) -> None:
    ok = _cli(home, "verify", "--json")
    assert ok.exit_code == 0
    assert json.loads(ok.output) == {
        "ok": True,
        "events_checked": history["end"],
        "problems": [],
    }
    with sqlite3.connect(home / "trail.db") as db:
        payload = db.execute(
            "SELECT payload FROM events WHERE type = 'AliasMoved' ORDER BY position LIMIT 1"
        ).fetchone()[0]
        tampered = payload[:-1] + bytes([payload[-1] ^ 0x02])  # v1 becomes v0 (zigzag ints)
        db.execute(
            "UPDATE events SET payload = ? WHERE position = ?", (tampered, history["promoted"])
        )
    failed = _cli(home, "verify")
    assert failed.exit_code == 1
    assert f"model:team/m v3 (position {history['promoted']})" in failed.output
    assert "the event was altered" in failed.output
    assert "FAILED" in failed.output


def test_verify_fails_when_a_projection_drifts_from_the_log(
    home: Path, history: dict[str, int]
) -> None:
    with sqlite3.connect(home / "trail.db") as db:
        db.execute("DELETE FROM aliases WHERE alias = 'production'")
    result = _cli(home, "verify", "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert not report["ok"]
    assert any("aliases" in p for p in report["problems"])
    assert _cli(home, "project", "--rebuild").exit_code == 0
    assert _cli(home, "verify").exit_code == 0
