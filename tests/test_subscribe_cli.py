"""``modeltrail subscribe``: a command per event, retries, and clean stops on signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import Result

import modeltrail as mt
from modeltrail.cli import consumers as cli_consumers
from modeltrail.consumers.subscriptions import SqlCursors
from tests.conftest import ManualClock
from tests.helpers import cli

WAIT = 30.0


@pytest.fixture
def registry(home: Path, clock: ManualClock) -> mt.Registry:
    reg = mt.open(home, actor="alice", namespace="team", clock=clock)
    for i in range(3):
        reg.log_version("m", {"w": f"{i}".encode()})
    return reg


def _subscribe(home: Path, *args: str) -> Result:
    return cli(home, "subscribe", *args)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_exec_runs_once_per_event_with_json_on_stdin_and_variables(
    registry: mt.Registry, home: Path, tmp_path: Path
) -> None:
    registry.set_alias("m:v0", "production")
    registry.set_alias("m:v1", "staging")
    registry.set_alias("m:v1", "production")
    out, env = tmp_path / "events.jsonl", tmp_path / "env.txt"
    command = (
        f'cat >> {out}; echo "$MODELTRAIL_EVENT_TYPE $MODELTRAIL_OWNER $MODELTRAIL_ALIAS '
        f'$MODELTRAIL_FROM>$MODELTRAIL_TO $MODELTRAIL_GROUP" >> {env}'
    )
    args = ["--group", "deploy", "--alias", "production", "--model", "m", "--exec", command]
    result = _subscribe(home, *args, "--from", "earliest", "--idle-timeout", "0.3")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in _lines(out)]
    moves = registry.audit(types=["AliasMoved"])
    assert [e["event_id"] for e in events] == [str(moves[0].event_id), str(moves[2].event_id)]
    assert events[1]["data"]["to_index"] == 1
    assert _lines(env) == [
        "AliasMoved team/m production >team/m:v0 deploy",
        "AliasMoved team/m production team/m:v0>team/m:v1 deploy",
    ]

    assert _subscribe(home, *args, "--idle-timeout", "0.3").exit_code == 0
    assert len(_lines(out)) == 2  # resumed after its last commit: nothing ran again
    registry.set_alias("m:v2", "production")
    assert _subscribe(home, *args, "--idle-timeout", "0.3").exit_code == 0
    assert [json.loads(line)["data"]["to_index"] for line in _lines(out)] == [0, 1, 2]


def test_a_failing_command_is_retried_with_backoff(
    registry: mt.Registry, home: Path, tmp_path: Path
) -> None:
    registry.set_alias("m:v0", "production")
    tries, out = tmp_path / "tries", tmp_path / "out"
    command = f"echo x >> {tries}; [ $(wc -l < {tries}) -ge 3 ] && cat >> {out}"
    result = _subscribe(
        home,
        *("--group", "g", "--alias", "production", "--from", "earliest"),
        *("--exec", command, "--backoff", "0.01", "--idle-timeout", "0.3"),
    )
    assert result.exit_code == 0, result.output
    assert len(_lines(tries)) == 3
    assert len(_lines(out)) == 1
    assert "retrying in" in result.output
    assert json.loads(_lines(out)[0])["type"] == "AliasMoved"


def test_after_max_attempts_it_stops_without_committing(
    registry: mt.Registry, home: Path, tmp_path: Path
) -> None:
    registry.set_alias("m:v0", "production")
    failing = ["--group", "g", "--alias", "production", "--from", "earliest", "--backoff", "0.01"]
    result = _subscribe(home, *failing, "--exec", "exit 7", "--max-attempts", "2")
    assert result.exit_code == 1
    assert "failed 2 times (exit status 7)" in result.output
    out = tmp_path / "out"
    result = _subscribe(home, *failing, "--exec", f"cat >> {out}", "--idle-timeout", "0.3")
    assert result.exit_code == 0
    assert len(_lines(out)) == 1  # the same event, first thing on the next start


def test_without_exec_it_prints_json_lines_and_keeps_its_place(
    registry: mt.Registry, home: Path
) -> None:
    registry.set_alias("m:v0", "production")
    args = ["--group", "printer", "--type", "AliasMoved", "--from", "earliest"]
    first = _subscribe(home, *args, "--idle-timeout", "0.3")
    assert [json.loads(line)["type"] for line in first.output.splitlines()] == ["AliasMoved"]
    registry.set_alias("m:v1", "production")
    second = _subscribe(home, *args, "--idle-timeout", "0.3")
    assert [json.loads(line)["data"]["to_index"] for line in second.output.splitlines()] == [1]


def _start(home: Path, command: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "MODELTRAIL_HOME": str(home), "MODELTRAIL_ACTOR": "alice"}
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "modeltrail.cli", "-n", "team", "subscribe"),
            *("--group", "deploy", "--alias", "production", "--from", "earliest"),
            *("--exec", command, "--backoff", "0.05", *extra),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_sigterm_lets_the_running_command_finish_and_keeps_its_place(
    registry: mt.Registry, home: Path, tmp_path: Path
) -> None:
    started, out = tmp_path / "started", tmp_path / "out"
    process = _start(home, f"touch {started}; sleep 0.5; cat >> {out}")
    try:
        registry.set_alias("m:v0", "production")
        _wait_for(started)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "(1 handled)" in stderr
    assert len(_lines(out)) == 1
    result = _subscribe(home, "--group", "deploy", "--alias", "production", "--idle-timeout", "0.3")
    assert result.output == ""  # committed before it stopped: nothing comes again


def test_a_second_signal_terminates_the_command_which_then_comes_again(
    registry: mt.Registry, home: Path, tmp_path: Path
) -> None:
    started, out = tmp_path / "started", tmp_path / "out"
    process = _start(home, f"touch {started}; sleep 30; cat >> {out}")
    try:
        registry.set_alias("m:v0", "production")
        _wait_for(started)
        process.send_signal(signal.SIGINT)
        assert process.stderr is not None
        # The second signal only once the first was handled (two at once may coalesce).
        while "stopping:" not in (line := process.stderr.readline()):
            assert line, "the first signal never stopped the consumer"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "comes again on the next start" in stderr
    assert not out.exists()
    result = _subscribe(home, "--group", "deploy", "--alias", "production", "--idle-timeout", "0.3")
    assert [json.loads(line)["data"]["to_index"] for line in result.output.splitlines()] == [0]


def test_printing_commits_once_nothing_more_is_buffered_not_once_per_event(
    registry: mt.Registry, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(40):
        registry.set_alias(f"m:v{i % 2}", "production")
    saved: list[int] = []
    save = SqlCursors.save

    def counted(cursors: SqlCursors, group: str, position: int, actor: str = "") -> None:
        saved.append(position)
        save(cursors, group, position, actor)

    monkeypatch.setattr(SqlCursors, "save", counted)
    monkeypatch.setattr(cli_consumers, "PRINT_COMMIT_S", 3600.0)
    args = ["--group", "printer", "--type", "AliasMoved", "--from", "earliest"]
    result = _subscribe(home, *args, "--idle-timeout", "0.3")
    assert len(result.output.splitlines()) == 40
    assert saved == [0, registry.head()]  # the new group's start, then one commit for all
    assert _subscribe(home, *args, "--idle-timeout", "0.3").output == ""
