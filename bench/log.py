"""The embedded SQL log: batched and single appends, and rebuilding the projections.

    python bench/log.py [--events 1000000] [--runs 3]

Batched appends are compared, in the same run, with raw ``sqlite3.executemany`` of rows
carrying the same encoded bytes into a table with the same unique indexes, at the same
durability setting, so the ratio survives a noisy machine.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RegistryEvents, machine, median_of, scratch, timed

from modeltrail.core.db import Database
from modeltrail.core.engine import Engine
from modeltrail.core.events.envelope import Event
from modeltrail.core.events.sql_log import _row

BATCH = 1000

RAW_TABLE = """
CREATE TABLE events (
    position INTEGER PRIMARY KEY, event_id BLOB NOT NULL UNIQUE, type TEXT NOT NULL,
    stream TEXT NOT NULL, stream_version INTEGER NOT NULL, namespace TEXT NOT NULL,
    recorded_at INTEGER NOT NULL, appended_at INTEGER NOT NULL, actor TEXT NOT NULL,
    prev_hash BLOB NOT NULL, hash BLOB NOT NULL, schema BLOB NOT NULL, payload BLOB NOT NULL,
    UNIQUE (stream, stream_version)
)"""


def engine_at(path: Path, durability: str = "normal") -> Engine:
    engine = Engine(Database(f"sqlite:///{path}", durability=durability))  # type: ignore[arg-type]
    engine.prepare()
    return engine


def batches(count: int) -> list[list[Event]]:
    events = list(RegistryEvents().stream(count))
    return [events[i : i + BATCH] for i in range(0, len(events), BATCH)]


def raw_rate(work: Path, prepared: list[list[Event]], synchronous: str) -> float:
    path = work / f"raw-{time.monotonic_ns()}.db"
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={synchronous}")
    connection.execute(RAW_TABLE)
    rows = [
        [_row(e.at(p, 0)) for p, e in enumerate(b, start=i * BATCH + 1)]
        for i, b in enumerate(prepared)
    ]
    insert = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

    def run() -> None:
        for chunk in rows:
            connection.execute("BEGIN")
            connection.executemany(insert, chunk)
            connection.execute("COMMIT")

    seconds = timed(run)
    connection.close()
    return sum(map(len, rows)) / seconds


def log_rate(work: Path, prepared: list[list[Event]]) -> float:
    log = engine_at(work / f"log-{time.monotonic_ns()}.db").log

    def run() -> None:
        for chunk in prepared:
            log.append(chunk)

    seconds = timed(run)
    log.close()
    return sum(map(len, prepared)) / seconds


def single_rate(work: Path, durability: str, count: int) -> float:
    log = engine_at(work / f"single-{durability}-{time.monotonic_ns()}.db", durability).log
    events = list(RegistryEvents().stream(count))
    seconds = timed(lambda: [log.append([e]) for e in events])
    log.close()
    return count / seconds


def rebuild_rate(work: Path, count: int, runs: int) -> tuple[float, list[float], float]:
    engine = engine_at(work / "rebuild.db")
    started = time.perf_counter()
    pending: list[Event] = []
    for event in RegistryEvents().stream(count):
        pending.append(event)
        if len(pending) == 20_000:
            engine.log.append(pending)
            pending = []
    engine.log.append(pending)
    loaded = time.perf_counter() - started
    median, values = median_of(runs, lambda: count / timed(engine.rebuild))
    return median, values, count / loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="events to rebuild from")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with scratch() as tmp:
        work = Path(tmp)
        prepared = batches(50_000)
        for synchronous in ("NORMAL", "FULL"):
            ratios = []
            for _ in range(args.runs):
                raw = raw_rate(work, prepared, synchronous)
                ours = log_rate(work, prepared) if synchronous == "NORMAL" else None
                if ours is not None:
                    ratios.append((ours, raw))
            if synchronous == "NORMAL":
                ratios.sort(key=lambda pair: pair[0] / pair[1])
                ours, raw = ratios[len(ratios) // 2]
                print(
                    f"batched appends ({BATCH}/batch, synchronous=NORMAL): {ours:,.0f} events/s; "
                    f"raw executemany {raw:,.0f} rows/s; ratio {ours / raw:.2f}x "
                    f"(runs: {', '.join(f'{o / r:.2f}' for o, r in ratios)})"
                )
        for durability, count in (("normal", 5000), ("full", 1000)):
            median, values = median_of(
                args.runs, lambda d=durability, c=count: single_rate(work, d, c)
            )
            print(
                f"single-event appends, durability={durability}: {median:,.0f} appends/s "
                f"(runs: {', '.join(f'{v:,.0f}' for v in values)})"
            )
        median, values, load = rebuild_rate(work, args.events, args.runs)
        print(
            f"rebuild of all projections from {args.events:,} registry events: "
            f"{median:,.0f} events/s "
            f"(runs: {', '.join(f'{v:,.0f}' for v in values)}); log loaded at {load:,.0f} events/s"
        )


if __name__ == "__main__":
    main()
