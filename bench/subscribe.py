"""Subscription delivery latency on the embedded SQLite log: from ``set_alias`` to the handler.

    python bench/subscribe.py [--moves 500] [--gap-ms 20]

A subscriber process (group ``bench``, filter: alias ``production``) commits each event
as it handles it and reports the monotonic time it got it; this process moves the alias
``--moves`` times, ``--gap-ms`` apart, noting the monotonic time just before each
``set_alias`` call. CLOCK_MONOTONIC is one clock for every process of the machine, so the
difference is the latency a deployer sees: the write's commit, the subscriber's poll
interval (5 ms) and its read.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, percentile

import modeltrail as mt


def subscriber(home: str, expected: int, ready: Any, out: Any) -> None:
    reg = mt.open(home, actor="bench", namespace="bench")
    sub = reg.subscribe("bench", alias="production", start="latest")
    ready.set()
    for _ in range(expected):
        event = sub.poll(60.0)
        if event is None:
            break
        got = time.monotonic_ns()
        sub.commit()
        out.put((event.position, got))
    out.put(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--moves", type=int, default=500)
    parser.add_argument("--gap-ms", type=float, default=20.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        home = str(Path(work) / "home")
        reg = mt.open(home, actor="bench", namespace="bench")
        for i in range(2):
            reg.log_version("m", {"w": f"{i}".encode()})
        context = mp.get_context("spawn")
        ready, out = context.Event(), context.Queue()
        process = context.Process(target=subscriber, args=(home, args.moves, ready, out))
        process.start()
        if not ready.wait(60):
            raise SystemExit("the subscriber did not start")
        sent: dict[int, int] = {}
        writes: list[float] = []
        for n in range(args.moves):
            started = time.monotonic_ns()
            reg.set_alias(f"m:v{(n + 1) % 2}", "production")  # v1, v0, v1, …: each a move
            writes.append((time.monotonic_ns() - started) / 1e6)
            sent[reg.head()] = started
            time.sleep(args.gap_ms / 1000)
        latencies = []
        while (item := out.get(timeout=60)) is not None:
            position, got = item
            latencies.append((got - sent[position]) / 1e6)
        process.join(60)
        reg.close()

    print(f"subscribe latency, SQLite, {machine()}")
    print(f"  {len(latencies)} alias moves delivered of {args.moves}, {args.gap_ms:g} ms apart")
    for label, values in (("set_alias -> handler", latencies), ("set_alias itself", writes)):
        print(
            f"  {label:<22} p50 {percentile(values, 50):6.2f} ms   "
            f"p99 {percentile(values, 99):6.2f} ms   max {max(values):6.2f} ms"
        )


if __name__ == "__main__":
    main()
