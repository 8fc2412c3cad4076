"""The modeltrail command, run as users run it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import modeltrail as mt


def cli(
    home: Path, *args: str, actor: str = "alice", check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MODELTRAIL_HOME": str(home),
        "MODELTRAIL_ACTOR": actor,
        "MODELTRAIL_NAMESPACE": "team",
    }
    done = subprocess.run(
        [sys.executable, "-m", "modeltrail.cli", *args],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}: {done.stderr}")
    return done


@pytest.fixture
def populated(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.bin").write_bytes(b"weights-1")
    cli(home, "log", "resnet", str(ckpt), "--alias", "candidate", "--metadata", '{"acc": 0.5}')
    (ckpt / "model.bin").write_bytes(b"weights-2")
    cli(home, "log", "resnet", str(ckpt), "--metadata", '{"acc": 0.7}')
    return home


def test_log_show_and_versions(populated: Path) -> None:
    shown = cli(populated, "show", "resnet:candidate").stdout
    assert "team/resnet:v0" in shown and "model.bin" in shown
    versions = json.loads(cli(populated, "versions", "resnet", "--json").stdout)
    assert [v["index"] for v in versions] == [0, 1]
    assert versions[1]["aliases"] == ["latest"]
    models = json.loads(cli(populated, "models", "--json").stdout)
    assert models[0]["aliases"] == {"candidate": "v0", "latest": "v1"}


def test_alias_moves_and_history(populated: Path) -> None:
    cli(populated, "alias", "set", "resnet:v0", "production")
    cli(populated, "alias", "set", "resnet:v1", "production", "--expected", "v0", actor="ci-bot")
    stale = cli(
        populated, "alias", "set", "resnet:v0", "production", "--expected", "v0", check=False
    )
    assert stale.returncode == 2
    assert stale.stderr.startswith("modeltrail: ConcurrencyConflict:")
    assert stale.stderr.count("\n") == 1
    history = json.loads(
        cli(populated, "alias", "history", "resnet", "production", "--json").stdout
    )
    assert [(h["from_label"], h["to_label"], h["actor"]) for h in history] == [
        (None, "v0", "alice"),
        ("v0", "v1", "ci-bot"),
    ]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("show", "nothing:v0"), "NotFound"),
        (("show", "bad name"), "InvalidName"),
        (("alias", "set", "resnet:v0", "latest"), "InvalidName"),
        (("alias", "rm", "resnet", "ghost"), "NotFound"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    populated: Path, args: tuple[str, ...], error: str
) -> None:
    done = cli(populated, *args, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith(f"modeltrail: {error}:")
    assert done.stderr.count("\n") == 1


def test_download_verifies_files(populated: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cli(populated, "download", "resnet:v1", str(out))
    assert (out / "model.bin").read_bytes() == b"weights-2"


def test_link_registered_and_lineage(populated: Path) -> None:
    cli(populated, "link", "resnet:v1", "classifier", "--alias", "staging")
    listed = json.loads(cli(populated, "registered", "classifier", "--json").stdout)
    assert listed["registered"]["aliases"] == {"staging": "team/resnet:v1"}
    lineage = json.loads(cli(populated, "lineage", "resnet:v1", "--json").stdout)
    assert lineage["registered"] == ["team/classifier"]


def test_diff(populated: Path) -> None:
    diff = json.loads(cli(populated, "diff", "resnet:v0", "resnet:v1", "--json").stdout)
    assert diff["changed"] == ["model.bin"]
    assert diff["metadata"] == {"acc": [0.5, 0.7]}


def test_events_audit_and_replay(populated: Path) -> None:
    cli(populated, "alias", "set", "resnet:v1", "production", actor="ci-bot")
    lines = cli(populated, "events", "--json").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["position"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["data"]["alias"] == "production"
    audit = cli(populated, "audit", "--actor", "ci-bot", "--format", "csv").stdout.splitlines()
    assert audit[0].startswith("position,recorded,actor,type,stream")
    assert len(audit) == 2 and "AliasMoved" in audit[1]
    replay = json.loads(cli(populated, "replay", "--as-of", str(len(events) - 1), "--json").stdout)
    assert replay["models"][0]["aliases"] == {"candidate": "v0", "latest": "v1"}


def test_verify_exits_1_on_tampering(populated: Path) -> None:
    assert "ok" in cli(populated, "verify").stdout
    with sqlite3.connect(populated / "trail.db") as raw:
        raw.execute("UPDATE events SET payload = CAST(payload || x'00' AS BLOB) WHERE position = 3")
    done = cli(populated, "verify", check=False)
    assert done.returncode == 1
    assert "position 3" in done.stdout


def test_project_rebuild_and_export(populated: Path, tmp_path: Path) -> None:
    cli(populated, "project", "--export", str(tmp_path / "a.jsonl"))
    cli(populated, "project", "--rebuild", "--export", str(tmp_path / "b.jsonl"))
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_help_lists_the_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modeltrail.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for command in (
        "models",
        "versions",
        "show",
        "alias",
        "link",
        "download",
        "diff",
        "lineage",
        "events",
        "audit",
        "replay",
        "verify",
        "project",
        "demo",
    ):
        assert command in done.stdout


def test_verify_reports_a_log_row_it_cannot_read(populated: Path) -> None:
    with sqlite3.connect(populated / "trail.db") as raw:
        raw.execute("UPDATE events SET payload = payload || x'00' WHERE position = 3")  # now TEXT
    done = cli(populated, "verify", check=False)
    assert done.returncode == 1
    assert "cannot be read" in done.stdout


class _CountingQuery:
    """A read model's query that counts the statements it runs."""

    def __init__(self, query: Any) -> None:
        self.query, self.count = query, 0

    def rows(self, sql: str, params: Any = ()) -> Any:
        self.count += 1
        return self.query.rows(sql, params)

    def one(self, sql: str, params: Any = ()) -> Any:
        self.count += 1
        return self.query.one(sql, params)


def _listed(reg: mt.Registry) -> dict[str, int]:
    """The statements each listing runs."""
    counting = _CountingQuery(reg._read.query)
    reg._read.query = counting
    listings: dict[str, Callable[[], object]] = {
        "models": lambda: reg.models(None),
        "registered": lambda: reg.registered_models(None),
        "versions": lambda: reg.versions("m0"),
    }
    ran: dict[str, int] = {}
    try:
        for name, listing in listings.items():
            counting.count = 0
            listing()
            ran[name] = counting.count
    finally:
        reg._read.query = counting.query
    return ran


def _grow(reg: mt.Registry, models: range) -> None:
    for i in models:
        for n in range(2):
            reg.log_version(f"m{i}", {"w": f"{i}-{n}".encode()})
        reg.set_alias(f"m{i}:v0", "production")
        reg.log_version("m0", {"w": f"m0-{i}".encode()})
        reg.link(f"m{i}:v1", f"r{i}", aliases=["best"])


def test_listings_run_as_many_statements_for_many_rows_as_for_few(reg: mt.Registry) -> None:
    _grow(reg, range(2))
    few = _listed(reg)
    _grow(reg, range(2, 8))
    assert _listed(reg) == few
    models = reg.models(None)
    assert models == [reg.model(m.ref) for m in models]
    assert models[3].aliases == {"production": "v0", "latest": "v1"}
    registered = reg.registered_models(None)
    assert registered == [reg.registered(r.ref) for r in registered]
    assert registered[0].aliases == {"best": "team/m0:v1"}
    versions = reg.versions("m0")
    assert versions == [reg.get(v.ref) for v in versions]
    assert [v.aliases for v in versions[:2]] == [("production",), ()]
    assert versions[-1].aliases == ("latest",)
