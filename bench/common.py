"""Helpers the benchmarks share: timing, medians, a valid registry event generator."""

from __future__ import annotations

import itertools
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from modeltrail.core.events.codec import default_codec
from modeltrail.core.events.envelope import EMPTY_STREAM, Draft, Event, StreamHead
from modeltrail.core.events.seal import Sealer
from modeltrail.core.refs import model_stream, namespace_stream, registered_stream

OUT = Path(__file__).resolve().parent / "out"


def scratch() -> tempfile.TemporaryDirectory[str]:
    """A scratch directory under bench/out, where a user's ./.modeltrail would be.

    Not /tmp: on the machines these figures come from, creating a file under /tmp
    costs 235-380 µs against 9 µs under the project directory (same ext4 device), and a
    version upload creates one file per new blob."""
    OUT.mkdir(exist_ok=True)
    return tempfile.TemporaryDirectory(dir=OUT)


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def median_of(runs: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    values = [measure() for _ in range(runs)]
    return statistics.median(values), values


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class RegistryEvents:
    """Valid registry events without running commands: creates, versions, alias moves,
    registered models and links, sealed and chained like the real thing."""

    namespace: str = "bench"
    seed: int = 7
    sealer: Sealer = field(default_factory=lambda: Sealer(default_codec()))
    heads: dict[str, StreamHead] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    aliases: dict[tuple[str, str], int] = field(default_factory=dict)
    linked: set[tuple[str, str, int]] = field(default_factory=set)
    registered: list[str] = field(default_factory=list)

    def stream(self, count: int) -> Iterator[Event]:
        rng = random.Random(self.seed)
        clock = itertools.count(1_767_225_600_000_000)
        yield self._seal(
            Draft(
                "NamespaceCreated",
                namespace_stream(self.namespace),
                self.namespace,
                {"name": self.namespace, "owner": "bench", "personal": False},
            ),
            next(clock),
        )
        for _ in range(count - 1):
            yield self._seal(self._next(rng), next(clock))

    def _next(self, rng: random.Random) -> Draft:
        roll = rng.random()
        if not self.versions or roll < 0.04:
            return self._create_model()
        if roll < 0.06 or not self.registered:
            return self._create_registered()
        model = rng.choice(self.models) if roll >= 0.5 else self._recent_model(rng)
        if roll < 0.5 or self.versions[model] == 0:
            return self._version(model)
        index = rng.randrange(self.versions[model])
        if roll < 0.8:
            return self._alias(model, rng.choice(["production", "staging", "best"]), index)
        registered = rng.choice(self.registered)
        if (registered, model, index) in self.linked:
            return self._version(model)
        return self._link(registered, model, index)

    def _recent_model(self, rng: random.Random) -> str:
        return self.models[-1 - rng.randrange(min(len(self.models), 20))]

    def _create_model(self) -> Draft:
        name = f"model-{len(self.versions)}"
        self.versions[name] = 0
        self.models.append(name)
        data = {"name": name, "arch_hash": None, "description": None, "tags": {}}
        return Draft("ModelCreated", model_stream(self.namespace, name), self.namespace, data)

    def _create_registered(self) -> Draft:
        name = f"registered-{len(self.registered)}"
        self.registered.append(name)
        data = {"name": name, "description": None, "tags": {}}
        return Draft(
            "RegisteredModelCreated", registered_stream(self.namespace, name), self.namespace, data
        )

    def _version(self, model: str) -> Draft:
        index = self.versions[model]
        self.versions[model] = index + 1
        digest = f"{hash((model, index)) & (2**64 - 1):064x}"
        data = {
            "model": model,
            "index": index,
            "files": [{"path": "model.safetensors", "size": 1 << 20, "sha256": digest}],
            "digest": digest,
            "metadata": '{"val_acc":0.9}',
            "run": None,
            "epoch": None,
            "arch_hash": None,
            "derived_from": [],
        }
        return Draft("VersionLogged", model_stream(self.namespace, model), self.namespace, data)

    def _alias(self, model: str, alias: str, index: int) -> Draft:
        current = self.aliases.get((model, alias))
        if current == index:
            return self._version(model)
        self.aliases[(model, alias)] = index
        data = {
            "owner_kind": "model",
            "owner": model,
            "alias": alias,
            "from_namespace": None if current is None else self.namespace,
            "from_model": None if current is None else model,
            "from_index": current,
            "to_namespace": self.namespace,
            "to_model": model,
            "to_index": index,
        }
        return Draft("AliasMoved", model_stream(self.namespace, model), self.namespace, data)

    def _link(self, registered: str, model: str, index: int) -> Draft:
        self.linked.add((registered, model, index))
        data = {
            "registered": registered,
            "model_namespace": self.namespace,
            "model": model,
            "index": index,
        }
        return Draft(
            "VersionLinked", registered_stream(self.namespace, registered), self.namespace, data
        )

    def _seal(self, draft: Draft, recorded_at: int) -> Event:
        event = self.sealer.seal(
            draft,
            self.heads.get(draft.stream, EMPTY_STREAM),
            actor="bench",
            recorded_at=recorded_at,
        )
        self.heads[draft.stream] = StreamHead(event.stream_version, event.hash)
        return event
