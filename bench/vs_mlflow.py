"""The same registry workload on modeltrail and on MLflow's model registry, in one run.

    python bench/vs_mlflow.py [--moves 1000] [--lookups 1000] [--big 10000]

Per system: create 1,000 versions of one model, move an alias 1,000 times, resolve
``name:alias`` 1,000 times; then grow the model to --big versions and measure moves and
look-ups again. MLflow runs on SQLite through ``MlflowClient`` (its own default: a
rollback journal with synchronous=FULL); modeltrail at its default durability
(WAL, synchronous=NORMAL) and at ``durability="full"`` (WAL, synchronous=FULL).

modeltrail's version logging does more than MLflow's here: it stores and hashes a file
per version (MLflow only records a source URI).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, percentile, scratch

import modeltrail as mt


@dataclass
class Figures:
    versions_per_s: float
    moves_per_s: float
    lookups_per_s: float
    lookup_p50_ms: float
    lookup_p99_ms: float


class System:
    name: str

    def add_versions(self, count: int) -> None: ...
    def move(self, i: int) -> None: ...
    def lookup(self) -> None: ...


class Modeltrail(System):
    def __init__(self, home: Path, durability: str) -> None:
        self.name = f"modeltrail ({durability})"
        self.reg = mt.open(home, actor="bench", namespace="bench", durability=durability)
        self.count = 0

    def add_versions(self, count: int) -> None:
        for _ in range(count):
            self.reg.log_version("m", {"model.bin": f"weights {self.count}".encode()})
            self.count += 1

    def move(self, i: int) -> None:
        self.reg.set_alias(f"m:v{i % self.count}", "production")

    def lookup(self) -> None:
        self.reg.get("m:production")


class Mlflow(System):
    def __init__(self, home: Path) -> None:
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        from mlflow import MlflowClient

        self.name = "MLflow (SQLite)"
        uri = f"sqlite:///{home / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.client.create_registered_model("m")
        self.count = 0

    def add_versions(self, count: int) -> None:
        for _ in range(count):
            self.client.create_model_version("m", source=f"file:///weights/{self.count}")
            self.count += 1

    def move(self, i: int) -> None:
        self.client.set_registered_model_alias("m", "production", str(i % self.count + 1))

    def lookup(self) -> None:
        self.client.get_model_version_by_alias("m", "production")


def rate(count: int, action: Callable[[int], None]) -> float:
    start = time.perf_counter()
    for i in range(count):
        action(i)
    return count / (time.perf_counter() - start)


def measure(system: System, versions: int, moves: int, lookups: int) -> Figures:
    versions_rate = rate(1, lambda _: system.add_versions(versions)) * versions
    moves_rate = rate(moves, system.move)
    latencies = []
    for _ in range(lookups):
        start = time.perf_counter()
        system.lookup()
        latencies.append(time.perf_counter() - start)
    return Figures(
        versions_rate,
        moves_rate,
        lookups / sum(latencies),
        percentile(latencies, 50) * 1000,
        percentile(latencies, 99) * 1000,
    )


def report(label: str, results: dict[str, Figures]) -> None:
    print(f"\n{label}")
    columns = ("versions/s", 12), ("moves/s", 10), ("lookups/s", 11), ("p50 ms", 9), ("p99 ms", 9)
    print(f"{'system':<24}" + "".join(f"{name:>{width}}" for name, width in columns))
    for name, f in results.items():
        print(
            f"{name:<24}{f.versions_per_s:>12,.0f}{f.moves_per_s:>10,.0f}{f.lookups_per_s:>11,.0f}"
            f"{f.lookup_p50_ms:>9.3f}{f.lookup_p99_ms:>9.3f}"
        )
    base = results.get("MLflow (SQLite)")
    if base is None:
        return
    for name, f in results.items():
        if name != "MLflow (SQLite)":
            print(
                f"  {name} vs MLflow: versions {f.versions_per_s / base.versions_per_s:.0f}x, "
                f"moves {f.moves_per_s / base.moves_per_s:.0f}x, "
                f"lookups {f.lookups_per_s / base.lookups_per_s:.0f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--moves", type=int, default=1000)
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--big", type=int, default=10_000, help="versions for the second round")
    parser.add_argument(
        "--mlflow-big-moves",
        type=int,
        default=100,
        help="alias moves MLflow makes at --big versions (each loads every version)",
    )
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with scratch() as tmp:
        work = Path(tmp)
        systems: list[System] = [
            Modeltrail(work / "normal", "normal"),
            Modeltrail(work / "full", "full"),
            Mlflow(work),
        ]
        first = {s.name: measure(s, args.versions, args.moves, args.lookups) for s in systems}
        report(f"{args.versions:,} versions", first)
        second = {}
        for system in systems:
            moves = args.mlflow_big_moves if isinstance(system, Mlflow) else args.moves
            second[system.name] = measure(system, args.big - args.versions, moves, args.lookups)
        report(f"{args.big:,} versions (MLflow makes {args.mlflow_big_moves} moves here)", second)


if __name__ == "__main__":
    main()
