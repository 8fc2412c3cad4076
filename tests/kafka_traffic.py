"""Registry traffic sealed ahead of time, for appending straight to a Kafka log.

Commands run on a private in-memory state (every fold rule checked), so the batches are
exactly what trainers would send; ``stale`` and ``retry`` add the batches a real log
also sees: a claim on a version another writer took first, and a batch sent twice.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from modeltrail.core import commands as cmd
from modeltrail.core.batch import Batch
from modeltrail.core.events.codec import default_codec
from modeltrail.core.events.envelope import Draft, Event, StreamHead
from modeltrail.core.events.seal import Sealer
from modeltrail.core.projections.catalog import default_projections
from modeltrail.core.projections.fold import Folder
from modeltrail.core.projections.state import MemoryState
from modeltrail.core.projections.tables import STREAM_HEADS
from modeltrail.core.refs import run_stream


class Traffic:
    def __init__(self, actor: str = "trainer") -> None:
        self.actor = actor
        self.state = MemoryState()
        self.folder = Folder(default_projections(), default_codec())
        self.sealer = Sealer(default_codec())
        self.clock = itertools.count(1_767_225_600_000_000, 1000)

    def batch(self, decide: Callable[[Batch], object]) -> list[Event]:
        b = Batch(
            self.state,
            self.folder,
            self.sealer,
            actor=self.actor,
            recorded_at=next(self.clock),
            query=None,  # type: ignore[arg-type]  # these commands read only the state
        )
        decide(b)
        b.state.commit()
        return b.events

    def runs(self, namespace: str, model: str, names: list[str]) -> list[list[Event]]:
        return [
            self.batch(lambda b, name=name: cmd.open_run(b, namespace, model, name, {"n": name}))
            for name in names
        ]

    def metrics(self, namespace: str, model: str, run: str, count: int, step: int) -> list[Event]:
        def decide(b: Batch) -> None:
            for i in range(count):
                cmd.log_metrics(b, namespace, model, run, {"loss": 1 / (step + i + 1)}, step + i)

        return self.batch(decide)

    def stale(self, namespace: str, model: str, run: str, behind: int = 1) -> list[Event]:
        """A metrics event claiming a version of the run's stream that is already taken
        (sealed against the head ``behind`` events back): the projector rejects it."""
        stream = run_stream(namespace, model, run)
        head = self.state.get(STREAM_HEADS, (stream,))
        assert head is not None and head.version >= behind
        draft = Draft(
            "MetricsLogged",
            stream,
            namespace,
            {"model": model, "run": run, "step": None, "metrics": {"stale": 1.0}},
        )
        sealed = self.sealer.seal(
            draft,
            StreamHead(head.version - behind, b"\x00" * 32),
            actor=self.actor,
            recorded_at=next(self.clock),
        )
        return [sealed]


def mixed_traffic(
    namespaces: int, runs: int, batches: int, events_per_batch: int
) -> list[list[Event]]:
    """Runs in several namespaces, then metrics batches round-robin, with a stale claim
    every 25th batch and a resent batch every 40th."""
    traffic = Traffic()
    made: list[list[Event]] = []
    targets = [(f"ns{n}", "model", f"run{r}") for n in range(namespaces) for r in range(runs)]
    for n in range(namespaces):
        made += traffic.runs(f"ns{n}", "model", [f"run{r}" for r in range(runs)])
    for i in range(batches):
        ns, model, run = targets[i % len(targets)]
        made.append(traffic.metrics(ns, model, run, events_per_batch, step=i * events_per_batch))
        if i % 25 == 24:
            made.append(traffic.stale(ns, model, run))
        if i % 40 == 39:
            made.append(made[-2])
    return made
