"""Subscription delivery latency: from ``set_alias`` to the handler, on SQLite and on Kafka.

    python bench/subscribe.py [--backend sqlite|kafka|both] [--moves 500] [--gap-ms 20]

A subscriber process (group ``bench``, filter: alias ``production``) commits each event
as it handles it and reports the monotonic time it got it; this process moves the alias
``--moves`` times, ``--gap-ms`` apart, noting the monotonic time just before each
``set_alias`` call. CLOCK_MONOTONIC is one clock for every process of the machine, so the
difference is the latency a deployer sees.

- SQLite (embedded): the write's commit, the subscriber's poll interval (5 ms), its read.
- Kafka (with a PostgreSQL projection and one projector worker process): the append, the
  projector's transaction, the subscriber's consumer group fetching the record, and its
  wait for the projection's verdict on it (checkpoint polled every 5 ms) before handing it
  out. ``set_alias`` itself returns once the projector has applied the move. The
  subscriber joins its consumer group before the first move (a warm-up, not measured).
  Uses the servers named by MODELTRAIL_TEST_KAFKA / MODELTRAIL_TEST_PG when set,
  otherwise starts its own (as bench/kafka.py does).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import multiprocessing as mp
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

# This directory holds kafka.py: it goes after site-packages, so that `kafka` is
# kafka-python and `common` is still found here.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

from common import machine, percentile, scratch  # noqa: E402

import modeltrail as mt  # noqa: E402


def subscriber(options: dict[str, Any], expected: int, ready: Any, out: Any) -> None:
    reg = mt.open(**options)
    sub = reg.subscribe("bench", alias="production", start="latest")
    if reg.settings.kafka is not None:
        sub.poll(3.0)  # joins the consumer group; nothing has moved yet
    ready.set()
    for _ in range(expected):
        event = sub.poll(60.0)
        if event is None:
            break
        got = time.monotonic_ns()
        sub.commit()
        out.put((event.position, got))
    out.put(None)
    sub.close()
    reg.close()


def measure(options: dict[str, Any], moves: int, gap_ms: float) -> tuple[list[float], list[float]]:
    """(set_alias -> handler, set_alias itself), in milliseconds."""
    reg = mt.open(**options)
    for i in range(2):
        reg.log_version("m", {"w": f"{i}".encode()})
    context = mp.get_context("spawn")
    ready, out = context.Event(), context.Queue()
    process = context.Process(target=subscriber, args=(options, moves, ready, out))
    process.start()
    if not ready.wait(60):
        raise SystemExit("the subscriber did not start")
    sent: dict[int, int] = {}
    writes: list[float] = []
    for n in range(moves):
        started = time.monotonic_ns()
        reg.set_alias(f"m:v{(n + 1) % 2}", "production")  # v1, v0, v1, …: each a move
        writes.append((time.monotonic_ns() - started) / 1e6)
        sent[reg.head()] = started  # one namespace: on Kafka, one partition
        time.sleep(gap_ms / 1000)
    latencies = []
    while (item := out.get(timeout=60)) is not None:
        position, got = item
        latencies.append((got - sent[position]) / 1e6)
    process.join(60)
    reg.close()
    return latencies, writes


def _bench_kafka() -> ModuleType:
    """bench/kafka.py (its servers and databases), under a name that is not `kafka`."""
    spec = importlib.util.spec_from_file_location("bench_kafka", HERE / "kafka.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def kafka_registry(work: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """Registry options on fresh Kafka topics and a fresh PostgreSQL database, with one
    projector worker process running."""
    bench_kafka = _bench_kafka()
    with bench_kafka.servers() as (bootstrap, pg, how):
        prefix = f"bench-sub-{uuid.uuid4().hex[:8]}"
        options = {
            "home": str(work / "home"),
            "kafka": bootstrap,
            "kafka_prefix": prefix,
            "db": bench_kafka.fresh_database(pg),
            "actor": "bench",
            "namespace": "bench",
        }
        mt.open(**options).close()  # creates the topics and the projection tables
        workers: list[subprocess.Popen[bytes]] = bench_kafka.spawn_workers(
            options["db"], bootstrap, prefix, f"{prefix}-projector", 1
        )
        try:
            yield options, how
        finally:
            bench_kafka.stop_workers(workers)


def report(
    label: str, moves: int, gap_ms: float, latencies: list[float], writes: list[float]
) -> None:
    print(f"subscribe latency, {label}, {machine()}")
    print(f"  {len(latencies)} alias moves delivered of {moves}, {gap_ms:g} ms apart")
    for name, values in (("set_alias -> handler", latencies), ("set_alias itself", writes)):
        print(
            f"  {name:<22} p50 {percentile(values, 50):6.2f} ms   "
            f"p99 {percentile(values, 99):6.2f} ms   max {max(values):6.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "kafka", "both"], default="both")
    parser.add_argument("--moves", type=int, default=500)
    parser.add_argument("--gap-ms", type=float, default=20.0)
    args = parser.parse_args()

    if args.backend in ("sqlite", "both"):
        with scratch() as work:
            options = {"home": str(Path(work) / "home"), "actor": "bench", "namespace": "bench"}
            report("SQLite", args.moves, args.gap_ms, *measure(options, args.moves, args.gap_ms))
    if args.backend in ("kafka", "both"):
        with scratch() as work, kafka_registry(Path(work)) as (options, how):
            latencies, writes = measure(options, args.moves, args.gap_ms)
            label = f"Kafka + PostgreSQL projection (servers {how})"
            report(label, args.moves, args.gap_ms, latencies, writes)


if __name__ == "__main__":
    main()
