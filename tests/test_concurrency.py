"""Several processes writing to one embedded home at once.

A trainer logs versions while a deployer moves an alias to each new version and a third
process moves another alias with compare-and-set. The three start together, once each has
opened the registry, and their writes interleave by construction: the trainer logs the
next version while the deployer moves `production` to the previous one, and at a few
versions it waits until `staging` has caught up. Nothing may be lost or duplicated,
versions stay contiguous, and the projections equal a rebuild.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import queue
import subprocess
import sys
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import modeltrail as mt
from modeltrail.errors import ConcurrencyConflict, NotFound

VERSIONS = 30
GATES = (9, 19, 29)  # versions at which the trainer waits for `staging` to reach them
HANG = 300  # seconds: only a guard against a hung process, never reached by a passing run


def _label(i: int) -> str:
    return f"v{i}"


def _index(label: str | None) -> int:
    return -1 if label is None else int(label[1:])


def trainer(
    home: str,
    start: Barrier,
    logged: queue.Queue[int],
    acks: queue.Queue[int],
    gates: queue.Queue[int],
    gate_acks: queue.Queue[int],
    done: Event,
) -> None:
    reg = mt.open(home, actor="trainer", namespace="team")
    start.wait(HANG)
    for i in range(VERSIONS):
        reg.log_version("m", {"weights.bin": f"epoch {i}".encode()}, metadata={"epoch": i})
        logged.put(i)
        if i > 0:  # v(i-1) is being deployed while v(i) was logged
            assert acks.get(timeout=HANG) == i - 1
        if i in GATES:
            gates.put(i)
            assert gate_acks.get(timeout=HANG) == i
    assert acks.get(timeout=HANG) == VERSIONS - 1
    done.set()
    reg.close()


def deployer(
    home: str,
    start: Barrier,
    logged: queue.Queue[int],
    acks: queue.Queue[int],
    results: queue.Queue[tuple[str, int, int]],
) -> None:
    reg = mt.open(home, actor="deployer", namespace="team")
    start.wait(HANG)
    moved = 0
    for _ in range(VERSIONS):
        i = logged.get(timeout=HANG)
        before = len(reg.alias_history("m", "production"))  # only this process moves it
        reg.set_alias(f"m:{_label(i)}", "production")
        moved += len(reg.alias_history("m", "production")) - before
        acks.put(i)
    results.put(("deployer", moved, 0))
    reg.close()


def compare_and_setter(
    home: str,
    start: Barrier,
    gates: queue.Queue[int],
    gate_acks: queue.Queue[int],
    done: Event,
    results: queue.Queue[tuple[str, int, int]],
) -> None:
    reg = mt.open(home, actor="cas", namespace="team")
    start.wait(HANG)
    wins = conflicts = 0
    gate: int | None = None
    while True:
        finished = done.is_set()  # read first: the pass below then sees the last version
        if gate is None:
            with contextlib.suppress(queue.Empty):
                gate = gates.get_nowait()
        try:
            aliases = reg.model("m").aliases
        except NotFound:
            continue  # the trainer has not logged anything yet
        current = aliases.get("staging")
        if _index(current) < _index(aliases["latest"]):
            before = len(reg.alias_history("m", "staging"))  # only this process moves it
            try:
                reg.set_alias("m:latest", "staging", expected=current)
            except ConcurrencyConflict:
                conflicts += 1
                continue
            wins += len(reg.alias_history("m", "staging")) - before
            current = reg.model("m").aliases.get("staging")
        if gate is not None and _index(current) >= gate:
            gate_acks.put(gate)
            gate = None
        if finished:
            break
    results.put(("cas", wins, conflicts))
    reg.close()


def test_concurrent_processes_lose_nothing(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    mt.open(home).close()  # create the schema once, as a first user would
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    logged: Any = context.Queue()
    acks: Any = context.Queue()
    gates: Any = context.Queue()
    gate_acks: Any = context.Queue()
    results: Any = context.Queue()
    done = context.Event()
    processes = [
        context.Process(target=trainer, args=(home, start, logged, acks, gates, gate_acks, done)),
        context.Process(target=deployer, args=(home, start, logged, acks, results)),
        context.Process(
            target=compare_and_setter, args=(home, start, gates, gate_acks, done, results)
        ),
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=HANG)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    counts = {
        name: (moves, conflicts)
        for name, moves, conflicts in [results.get(timeout=HANG), results.get(timeout=HANG)]
    }
    production_moved, _ = counts["deployer"]
    wins, conflicts = counts["cas"]

    reg = mt.open(home, actor="auditor", namespace="team")
    assert [v.label for v in reg.versions("m")] == [_label(i) for i in range(VERSIONS)]
    assert [v.metadata["epoch"] for v in reg.versions("m")] == list(range(VERSIONS))
    events = list(reg.events())
    assert [e.position for e in events] == list(range(1, len(events) + 1))
    assert len({e.event_id for e in events}) == len(events)

    production = reg.alias_history("m", "production")
    assert production_moved == len(production) == VERSIONS
    assert [move.to_label for move in production] == [_label(i) for i in range(VERSIONS)]
    staging = reg.alias_history("m", "staging")
    assert wins == len(staging)  # each counted win appended exactly one move
    assert len(staging) >= len(GATES) or conflicts > 0  # it moved with the trainer
    assert staging[-1].to_label == _label(VERSIONS - 1)
    for earlier, later in itertools.pairwise(staging):
        assert later.from_label == earlier.to_label  # every move starts where the last ended
        assert _index(later.to_label) > _index(earlier.to_label)

    # The writers interleaved: between the trainer's first and last version, the log holds
    # moves of both other processes.
    actors = [e.actor for e in events]
    first, last = actors.index("trainer"), len(actors) - 1 - actors[::-1].index("trainer")
    assert {"deployer", "cas"} <= set(actors[first:last])

    report = reg.verify()
    assert report.ok, report.problems
    live = reg.export()
    reg.rebuild()
    assert reg.export() == live
    reg.close()


def test_a_stale_compare_and_set_from_another_process_is_refused(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    reg = mt.open(home, actor="a", namespace="team")
    reg.log_version("m", {"w": b"1"}, aliases=["production"])
    reg.log_version("m", {"w": b"2"})
    code = (
        "import modeltrail as mt; r = mt.open(sys.argv[1], actor='b', namespace='team'); "
        "r.set_alias('m:v1', 'production', expected='v0')"
    )
    subprocess.run([sys.executable, "-c", "import sys; " + code, home], check=True)
    try:
        reg.set_alias("m:v0", "production", expected="v0")
    except ConcurrencyConflict as exc:
        assert "v1" in str(exc)
    else:
        raise AssertionError("a stale expectation must be refused")
    assert reg.get("m:production").label == "v1"
