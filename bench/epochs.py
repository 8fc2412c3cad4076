"""Inference batches: recording them, folding them on a rebuild, evaluating an epoch.

    python bench/epochs.py [--samples 10000000] [--runs 3]

- recorded: batches of 256 samples written one command (one transaction) each, the way
  a tracer writes them once it has packed a batch;
- folded: a rebuild of every projection from a log holding ``--samples`` samples in
  batches of 256 (events appended in bulk first), and the fold alone, in memory, over
  events already read;
- evaluated: ``request_evaluation(n_epoch="latest")`` on that log: it reads a few epoch
  rows, so its time does not grow with the samples recorded.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, median_of, scratch, timed

import modeltrail as mt
from modeltrail.core.db import Database
from modeltrail.core.engine import Engine
from modeltrail.core.events.codec import default_codec
from modeltrail.core.events.envelope import EMPTY_STREAM, Draft, Event, StreamHead
from modeltrail.core.events.seal import Sealer
from modeltrail.core.projections.epochs import evaluate, pack
from modeltrail.core.projections.state import MemoryState
from modeltrail.core.refs import inference_stream, model_stream, namespace_stream, run_stream
from modeltrail.producers.spool import outbox_for

BATCH = 256
CLASSES = 10
EPOCHS = 20


def batch_data(rng: random.Random, n_epoch: int, dataset_type: str, first_id: int) -> dict:
    labels = [rng.randrange(CLASSES) for _ in range(BATCH)]
    return {
        "dataset_type": dataset_type,
        "n_epoch": n_epoch,
        "n_samples": BATCH,
        "num_classes": CLASSES,
        "input_ids": pack("q", range(first_id, first_id + BATCH)),
        "labels": pack("i", labels),
        "predictions": pack("i", [x if rng.random() < 0.7 else 0 for x in labels]),
        "losses": pack("f", [rng.expovariate(2.0) for _ in range(BATCH)]),
        "confidences": pack("f", [rng.random() for _ in range(BATCH)]),
    }


def record_rate(work: Path, batches: int) -> float:
    reg = mt.open(work / f"record-{time.monotonic_ns()}", actor="bench", namespace="bench")
    run = reg.run("m", "r")
    outbox = outbox_for(reg)
    rng = random.Random(1)
    prepared = [batch_data(rng, i * EPOCHS // batches, "train", i * BATCH) for i in range(batches)]

    def record_all() -> None:
        for data in prepared:
            entry = outbox.entry("inference", "bench", {"model": "m", "run": "r", "batch": data})
            assert outbox.submit(entry)

    seconds = timed(record_all)
    reg.close()
    del run
    return batches * BATCH / seconds


def inference_log(count: int) -> list[Event]:
    """A namespace, a model, a run and ``count`` batches over EPOCHS epochs (10% val)."""
    sealer = Sealer(default_codec())
    clock = itertools.count(1_767_225_600_000_000, 1000)
    heads: dict[str, StreamHead] = {}

    def seal(type_: str, stream: str, data: dict) -> Event:
        event = sealer.seal(
            Draft(type_, stream, "bench", data),
            heads.get(stream, EMPTY_STREAM),
            actor="bench",
            recorded_at=next(clock),
        )
        heads[stream] = StreamHead(event.stream_version, event.hash)
        return event

    events = [
        seal(
            "NamespaceCreated",
            namespace_stream("bench"),
            {"name": "bench", "owner": "bench", "personal": False},
        ),
        seal(
            "ModelCreated",
            model_stream("bench", "m"),
            {"name": "m", "arch_hash": None, "description": None, "tags": {}},
        ),
        seal(
            "RunStarted",
            run_stream("bench", "m", "r"),
            {"model": "m", "run": "r", "config": "{}", "config_digest": "-"},
        ),
    ]
    rng = random.Random(2)
    stream = inference_stream("bench", "m", "r")
    for i in range(count):
        dataset_type = "val" if i % 10 == 9 else "train"
        data = batch_data(rng, i * EPOCHS // count, dataset_type, (i % 2000) * BATCH)
        events.append(seal("InferenceBatchRecorded", stream, {"model": "m", "run": "r", **data}))
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--record", type=int, default=2000, help="batches to record")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with scratch() as tmp:
        work = Path(tmp)
        median, values = median_of(args.runs, lambda: record_rate(work, args.record))
        print(
            f"recorded: {median:,.0f} samples/s, one command per batch of {BATCH} "
            f"({median / BATCH:,.0f} batches/s; runs: {', '.join(f'{v:,.0f}' for v in values)})"
        )

        batches = -(-args.samples // BATCH)
        started = time.perf_counter()
        events = inference_log(batches)
        made = time.perf_counter() - started
        engine = Engine(Database(f"sqlite:///{work / 'epochs.db'}"))
        engine.prepare()
        started = time.perf_counter()
        for start in range(0, len(events), 2000):
            engine.log.append(events[start : start + 2000])
        appended = time.perf_counter() - started
        samples = batches * BATCH
        print(
            f"log of {samples:,} samples in {batches:,} batches: sealed in {made:.1f} s, "
            f"appended in {appended:.1f} s ({samples / appended:,.0f} samples/s)"
        )

        def fold_in_memory(read: list[Event]) -> float:
            return samples / timed(lambda: engine.folder.apply_all(MemoryState(), read))

        median, values = median_of(args.runs, lambda: fold_in_memory(events))
        events.clear()  # the rebuild reads the log
        print(
            f"folded in memory (decode + every fold, events already read): {median:,.0f} "
            f"samples/s (runs: {', '.join(f'{v:,.0f}' for v in values)})"
        )
        median, values = median_of(args.runs, lambda: samples / timed(engine.rebuild))
        print(
            f"folded on a rebuild (read the log, fold, write the tables): {median:,.0f} "
            f"samples/s (runs: {', '.join(f'{v:,.0f}' for v in values)})"
        )

        reader = engine.database.reader()
        evaluate(reader, "bench", "m", "r", "latest", "train")  # warm the page cache
        times = []
        for _ in range(200):
            started = time.perf_counter()
            result = evaluate(reader, "bench", "m", "r", "latest", "train")
            times.append(time.perf_counter() - started)
        print(
            f'request_evaluation(n_epoch="latest") over {samples:,} samples: '
            f"median {statistics.median(times) * 1000:.2f} ms, max {max(times) * 1000:.2f} ms "
            f"(epoch {result.n_epoch}: {result.n_samples:,} samples, "
            f"accuracy {result.accuracy:.3f})"
        )
        engine.database.dispose()


if __name__ == "__main__":
    main()
