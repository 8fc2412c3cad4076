"""Several processes writing to one embedded home at once.

A trainer logs versions while a deployer moves an alias after every new version and a
third process moves another alias with compare-and-set. Nothing may be lost or
duplicated, versions stay contiguous, and the projections equal a rebuild.
"""

from __future__ import annotations

import itertools
import multiprocessing
import sys
from pathlib import Path

import modeltrail as mt
from modeltrail.errors import ConcurrencyConflict, NotFound

VERSIONS = 30


def trainer(home: str) -> None:
    reg = mt.open(home, actor="trainer", namespace="team")
    for i in range(VERSIONS):
        reg.log_version("m", {"weights.bin": f"epoch {i}".encode()}, metadata={"epoch": i})


def deployer(home: str) -> None:
    reg = mt.open(home, actor="deployer", namespace="team")
    moved = 0
    while moved < VERSIONS:
        try:
            reg.set_alias("m:latest", "production")
            moved += 1
        except NotFound:
            pass  # the trainer has not logged anything yet


def compare_and_setter(home: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    reg = mt.open(home, actor="cas", namespace="team")
    wins = conflicts = 0
    while wins + conflicts < VERSIONS:
        try:
            current = reg.model("m").aliases.get("staging")
            reg.set_alias("m:latest", "staging", expected=current)
            wins += 1
        except NotFound:
            continue
        except ConcurrencyConflict:
            conflicts += 1
    results.put((wins, conflicts))


def test_concurrent_processes_lose_nothing(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    mt.open(home).close()  # create the schema once, as a first user would
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=trainer, args=(home,)),
        context.Process(target=deployer, args=(home,)),
        context.Process(target=compare_and_setter, args=(home, results)),
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    wins, _conflicts = results.get(timeout=5)

    reg = mt.open(home, actor="auditor", namespace="team")
    assert [v.label for v in reg.versions("m")] == [f"v{i}" for i in range(VERSIONS)]
    assert [v.metadata["epoch"] for v in reg.versions("m")] == list(range(VERSIONS))
    events = list(reg.events())
    assert [e.position for e in events] == list(range(1, len(events) + 1))
    assert len({e.event_id for e in events}) == len(events)
    staging_moves = reg.alias_history("m", "staging")
    assert len(staging_moves) <= wins  # a win may find the alias already there
    for earlier, later in itertools.pairwise(staging_moves):
        assert later.from_label == earlier.to_label  # every move starts where the last ended
    report = reg.verify()
    assert report.ok, report.problems
    live = reg.export()
    reg.rebuild()
    assert reg.export() == live


def test_a_stale_compare_and_set_from_another_process_is_refused(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    reg = mt.open(home, actor="a", namespace="team")
    reg.log_version("m", {"w": b"1"}, aliases=["production"])
    reg.log_version("m", {"w": b"2"})
    code = (
        "import modeltrail as mt; r = mt.open(sys.argv[1], actor='b', namespace='team'); "
        "r.set_alias('m:v1', 'production', expected='v0')"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", "import sys; " + code, home], check=True)
    try:
        reg.set_alias("m:v0", "production", expected="v0")
    except ConcurrencyConflict as exc:
        assert "v1" in str(exc)
    else:
        raise AssertionError("a stale expectation must be refused")
    assert reg.get("m:production").label == "v1"
