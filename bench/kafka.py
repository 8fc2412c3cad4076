"""The Kafka log and its PostgreSQL projection: produce, project, append-to-visible latency.

    python bench/kafka.py [--events 200000] [--batch 100] [--rate 1000] [--seconds 10]
                          [--workers 2] [--traffic registry|trainer]

Uses the servers named by MODELTRAIL_TEST_KAFKA / MODELTRAIL_TEST_PG when set, otherwise
starts its own with scripts/services.py (PostgreSQL with fsync on) and stops them after.
The events are valid traffic in four namespaces, so they spread over the registry
topic's partitions: ``registry`` (default) is models, versions, alias moves and links
(every fold busy), ``trainer`` is what trainers send most, metrics on their runs.

Figures:
- produce: events/s appending batches of ``--batch`` events, pipelined (a producer that
  sends without waiting for each acknowledgement) and one append at a time;
- single-event appends/s, one at a time (each waits for acks=all);
- project: events/s that projector worker processes (1, then ``--workers``) apply into a
  fresh PostgreSQL database, from offset 0, counted from their start (group join
  included) until every partition is projected;
- latency: append -> visible in the projection (its partition's checkpoint passed),
  p50/p99, with single-event appends at ``--rate`` events/s for ``--seconds``, after two
  unmeasured seconds at that rate (the workers' first reads load the tables they fold).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# This file is named kafka.py: its directory goes after site-packages, so that `kafka` is
# kafka-python and `common` is still found here.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

from common import RegistryEvents, machine, percentile  # noqa: E402

from modeltrail.core.db import Database  # noqa: E402
from modeltrail.core.events.codec import default_codec  # noqa: E402
from modeltrail.core.events.envelope import (  # noqa: E402
    EMPTY_STREAM,
    Draft,
    Event,
    StreamHead,
)
from modeltrail.core.events.kafka_log import KafkaLog, Pending, offset_of  # noqa: E402
from modeltrail.core.events.seal import Sealer  # noqa: E402
from modeltrail.core.kafka_engine import KafkaEngine  # noqa: E402

ROOT = HERE.parent
NAMESPACES = 4
WORKER = """
import sys
from modeltrail.consumers.projector import run_worker
from modeltrail.core.db import Database
from modeltrail.core.events.kafka_log import KafkaLog, Pending, Record
from modeltrail.core.kafka_engine import KafkaEngine

db, bootstrap, prefix, group = sys.argv[1:]
engine = KafkaEngine(Database(db), KafkaLog(bootstrap, prefix=prefix))
run_worker(engine, group=group)
"""


def trainer_events(namespace: str, runs: int = 10) -> Iterator[Event]:
    """What trainers send most: metrics on their runs' streams (after the namespace,
    the model and the runs are created), sealed and chained like the real thing."""
    sealer = Sealer(default_codec())
    heads: dict[str, StreamHead] = {}
    clock = itertools.count(1_767_225_600_000_000)

    def seal(type_: str, stream: str, data: dict[str, Any]) -> Event:
        event = sealer.seal(
            Draft(type_, stream, namespace, data),
            heads.get(stream, EMPTY_STREAM),
            actor="bench",
            recorded_at=next(clock),
        )
        heads[stream] = StreamHead(event.stream_version, event.hash)
        return event

    yield seal(
        "NamespaceCreated",
        f"namespace:{namespace}",
        {"name": namespace, "owner": "bench", "personal": False},
    )
    yield seal(
        "ModelCreated",
        f"model:{namespace}/net",
        {"name": "net", "arch_hash": None, "description": None, "tags": {}},
    )
    for run in range(runs):
        yield seal(
            "RunStarted",
            f"run:{namespace}/net/r{run}",
            {"model": "net", "run": f"r{run}", "config": "{}", "config_digest": "0"},
        )
    for step in itertools.count():
        run = step % runs
        yield seal(
            "MetricsLogged",
            f"run:{namespace}/net/r{run}",
            {
                "model": "net",
                "run": f"r{run}",
                "step": step,
                "metrics": {"loss": 1 / (step + 1), "acc": 0.5},
            },
        )


@contextlib.contextmanager
def servers() -> Iterator[tuple[str, str, str]]:
    """(Kafka bootstrap, PostgreSQL URL, what they are), started here when not given."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import services

    kafka, pg = os.environ.get("MODELTRAIL_TEST_KAFKA"), os.environ.get("MODELTRAIL_TEST_PG")
    base = Path(tempfile.mkdtemp(prefix="modeltrail-bench-kafka-"))
    started = []
    try:
        if not kafka:
            kafka = str(services.start("kafka", base)["url"])
            started.append("kafka")
        if not pg:
            pg = str(services.start("postgres", base, durable=True)["url"])
            started.append("postgres")
        how = "started here (PostgreSQL fsync on)" if started else "given by the environment"
        yield kafka, pg, how
    finally:
        for kind in started:
            services.stop(kind, base, remove=True)


def fresh_database(url: str) -> str:
    import psycopg
    from psycopg import sql

    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = url.replace("+psycopg", "")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return url.rsplit("/", 1)[0] + f"/{name}"


def batches_of(streams: list[Iterator[Event]], count: int, size: int) -> list[list[Event]]:
    """``count`` events in batches of ``size``, namespaces taking turns."""
    made = []
    for number in range(count // size):
        source = streams[number % len(streams)]
        made.append([next(source) for _ in range(size)])
    return made


def produce(kafka: KafkaLog, batches: list[list[Event]], pipelined: bool) -> float:
    start = time.perf_counter()
    if pipelined:
        pending = [kafka.submit(b) for b in batches]
        for appended in pending:
            appended.result()
    else:
        for batch in batches:
            kafka.append(batch)
    return sum(map(len, batches)) / (time.perf_counter() - start)


Workers = list[subprocess.Popen[bytes]]


def spawn_workers(db: str, bootstrap: str, prefix: str, group: str, count: int) -> Workers:
    return [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, db, bootstrap, prefix, group],
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def stop_workers(workers: Workers) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(timeout=60)


def project(engine: KafkaEngine, ends: dict[str, int], events: int, start: float) -> float:
    """Events/s from ``start`` (workers launched) until every partition is projected."""
    while True:
        done = engine.checkpoints()
        if all(end == 0 or offset_of(done.get(p, 0)) + 1 == end for p, end in ends.items()):
            return events / (time.perf_counter() - start)
        time.sleep(0.02)


def latency(
    kafka: KafkaLog, engine: KafkaEngine, streams: list[Iterator[Event]], rate: int, seconds: int
) -> list[float]:
    """Single-event appends at ``rate``/s; seconds from each send until the projection's
    checkpoint for its partition passed it (checkpoints sampled every 2 ms)."""
    moves: list[tuple[float, dict[str, int]]] = []  # (time seen, checkpoints) when changed
    finished = threading.Event()

    def watch() -> None:
        reader = engine.database.reader()
        sql = "SELECT partition, position FROM checkpoints WHERE name = 'projections'"
        while not finished.is_set():
            found: dict[str, int] = dict(reader.rows(sql))
            if not moves or found != moves[-1][1]:
                moves.append((time.perf_counter(), found))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    interval = 1 / rate
    start = time.perf_counter()
    pending: list[tuple[Pending, float]] = []
    for number in range(rate * seconds):
        due = start + number * interval
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        pending.append((kafka.submit([next(streams[number % len(streams)])]), time.perf_counter()))
    sent = [(appended.result()[0], at) for appended, at in pending]
    deadline = time.monotonic() + 120
    while moves and any(moves[-1][1].get(e.partition, 0) < e.position for e, _ in sent):
        assert time.monotonic() < deadline, "the projector fell behind for good"
        time.sleep(0.05)
    finished.set()
    watcher.join(timeout=60)
    seen = []
    for event, at in sent:
        visible = next(
            when for when, done in moves if done.get(event.partition, 0) >= event.position
        )
        seen.append(max(visible - at, 0.0))
    return seen


def project_and_watch(
    args: argparse.Namespace,
    kafka: KafkaLog,
    streams: list[Iterator[Event]],
    bootstrap: str,
    pg: str,
    prefix: str,
    total: int,
) -> list[float]:
    """Projects the whole log with 1 and with ``--workers`` worker processes (a fresh
    database each), then measures append-to-visible latency with the last ones."""
    ends = kafka.end_offsets()
    workers: Workers = []
    engine: KafkaEngine | None = None
    try:
        for count in sorted({1, args.workers}):
            stop_workers(workers)
            if engine is not None:
                engine.close()
            db = fresh_database(pg)
            engine = KafkaEngine(Database(db), KafkaLog(bootstrap, prefix=prefix))
            engine.prepare()
            start = time.perf_counter()
            group = f"{prefix}-projector-{count}"
            workers = spawn_workers(db, bootstrap, prefix, group, count)
            rate = project(engine, ends, total, start)
            print(
                f"project into PostgreSQL, {count} worker process{'es' * (count > 1)}: "
                f"{rate:,.0f} events/s ({total:,} events, group join included)"
            )
        assert engine is not None
        warm = kafka.append([next(streams[0])])  # steady state: tables loaded, group joined
        engine.await_applied(warm, timeout_s=120)
        latency(kafka, engine, streams, args.rate, 2)
        seen = latency(kafka, engine, streams, args.rate, args.seconds)
    finally:
        stop_workers(workers)
        if engine is not None:
            engine.close()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="projector processes")
    parser.add_argument(
        "--traffic",
        choices=["registry", "trainer"],
        default="registry",
        help="registry: models, versions, alias moves, links; trainer: metrics on runs",
    )
    args = parser.parse_args()

    with servers() as (bootstrap, pg, how):
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        if args.traffic == "registry":
            streams = [
                RegistryEvents(namespace=f"bench{n}", seed=n).stream(10**9)
                for n in range(NAMESPACES)
            ]
        else:
            streams = [trainer_events(f"bench{n}") for n in range(NAMESPACES)]
        kafka = KafkaLog(bootstrap, prefix=prefix)
        kafka.ensure_topics()
        print(f"kafka.py: {machine()}; servers {how}; {args.traffic} traffic")

        batches = batches_of(streams, args.events, args.batch)
        kafka.append(batches[0])  # connect, fetch metadata and a producer id
        produced = produce(kafka, batches[1:], pipelined=True)
        print(f"produce, appends of {args.batch} pipelined: {produced:,.0f} events/s")
        sequential = batches_of(streams, min(args.events // 10, 20_000), args.batch)
        one_by_one = produce(kafka, sequential, pipelined=False)
        print(f"produce, appends of {args.batch} one at a time: {one_by_one:,.0f} events/s")
        singles = [[next(streams[i % NAMESPACES])] for i in range(1000)]
        single = produce(kafka, singles, pipelined=False)
        print(f"single-event appends, one at a time (acks=all): {single:,.0f} appends/s")
        total = sum(map(len, batches)) + sum(map(len, sequential)) + len(singles)

        seen = project_and_watch(args, kafka, streams, bootstrap, pg, prefix, total)
        ms = [s * 1000 for s in seen]
        print(
            f"append -> visible at {args.rate:,} events/s ({len(ms):,} events): "
            f"p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms, "
            f"max {max(ms):.1f} ms"
        )
        kafka.close()


if __name__ == "__main__":
    main()
