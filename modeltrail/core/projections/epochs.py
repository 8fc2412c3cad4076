"""Epochs: running aggregates of traced inference batches, and the queries that read them.

One row per model / run / dataset type / ``n_epoch`` holds what an evaluation needs —
sample and batch counts, correct predictions, the loss and confidence sums, per-class
counts and a bounded list of the hardest inputs — so ``request_evaluation`` reads a
few rows whatever the number of samples recorded. Per-sample arrays arrive as packed
little-endian bytes and are folded with the standard library alone (core does not
depend on numpy).

``n_epoch=None`` is a value of its own (data recorded without an epoch); key columns
are never None, so it is stored as ``NO_EPOCH`` (-1, which no real epoch can be).

"latest" is the epoch of the most recently recorded batch, by the batch's version in
its run's inference stream: that is log order, and it holds on every log, because a
run's batches form one stream. It is not the largest epoch number: after a restart
(epochs 0-9, then 0-4 again) the latest is 4.

The fold reads no registry table: inference events may be stored and ordered apart from
the registry's (the Kafka log keeps them in their own topic), so a rule that looked at
runs or models would make replays disagree. The command checks the run before emitting.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from modeltrail.core.db import Query
from modeltrail.core.events.envelope import Event, to_datetime
from modeltrail.core.projections.fold import Projection
from modeltrail.core.projections.state import Spec, State
from modeltrail.errors import InvalidInput, NotFound

NO_EPOCH = -1
"""How ``n_epoch=None`` is stored in the key column (epochs are integers >= 0)."""

HARDEST = 32
"""How many of the highest-loss inputs each epoch keeps."""

MAX_CLASSES = 1 << 20
_BIG_ENDIAN = sys.byteorder == "big"
_WIDTH = {"q": 8, "i": 4, "f": 4}

for _code, _size in _WIDTH.items():  # the packed formats assume these C sizes
    if array(_code).itemsize != _size:  # pragma: no cover - no mainstream platform differs
        raise ImportError(f"array type {_code!r} is not {_size} bytes on this platform")


class EpochRow(NamedTuple):
    namespace: str
    model: str
    run: str
    dataset_type: str
    n_epoch: int
    batches: int
    n_samples: int
    correct: int
    scored: int
    """Samples with a finite loss: the ones the loss and confidence sums cover."""
    loss_sum: float
    confidence_sum: float
    num_classes: int
    label_counts: bytes
    """int64 per class: samples with that label."""
    correct_counts: bytes
    """int64 per class: samples with that label predicted right."""
    predicted_counts: bytes
    """int64 per class: samples predicted as that class."""
    hardest_ids: bytes
    """int64 input ids, highest loss first (ties: smaller id first), each id once."""
    hardest_losses: bytes
    """float32, the loss of each id in ``hardest_ids`` (its highest in this epoch)."""
    first_seq: int
    last_seq: int
    """Version, in the run's inference stream, of the epoch's first and last batch."""
    last_position: int
    first_at: int
    last_at: int


EPOCHS = Spec("epochs", EpochRow, ("namespace", "model", "run", "dataset_type", "n_epoch"))


def epoch_key(n_epoch: int | None) -> int:
    return NO_EPOCH if n_epoch is None else n_epoch


def epoch_value(stored: int) -> int | None:
    return None if stored == NO_EPOCH else stored


def pack(code: str, values: Iterable[Any]) -> bytes:
    """Values as packed little-endian bytes: ``q`` int64, ``i`` int32, ``f`` float32."""
    packed = array(code, values)
    if _BIG_ENDIAN:  # pragma: no cover - little-endian machines
        packed.byteswap()
    return packed.tobytes()


def unpack(code: str, data: bytes) -> array[Any]:
    values = array(code)
    values.frombytes(data)
    if _BIG_ENDIAN:  # pragma: no cover
        values.byteswap()
    return values


# -- the fold ---------------------------------------------------------------------------


def _field(code: str, data: bytes, n: int, name: str) -> array[Any]:
    if len(data) != n * _WIDTH[code]:
        raise InvalidInput(
            f"inference batch field {name} holds {len(data)} bytes, not {n * _WIDTH[code]}: "
            f"{n} samples of {_WIDTH[code]} bytes each"
        )
    return unpack(code, data)


def _add_counts(stored: bytes, width: int, counts: Counter[int]) -> bytes:
    values = unpack("q", stored)
    if len(values) < width:
        values.extend([0] * (width - len(values)))
    for cls, count in counts.items():
        values[cls] += count
    return pack("q", values)


def _merge_hardest(
    ids: bytes, losses: bytes, candidates: Iterable[tuple[float, int]]
) -> tuple[bytes, bytes]:
    """The ``HARDEST`` ids of highest loss (each id at its highest loss)."""
    best = dict(zip(unpack("q", ids), unpack("f", losses), strict=True))
    changed = False
    for loss, input_id in candidates:
        if loss > best.get(input_id, -math.inf):
            best[input_id] = loss
            changed = True
    if not changed:
        return ids, losses
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:HARDEST]
    return pack("q", (i for i, _ in ranked)), pack("f", (loss for _, loss in ranked))


def _hard_candidates(
    ids: bytes, losses: bytes, batch_ids: array[Any], batch_losses: array[Any]
) -> list[tuple[float, int]]:
    """The batch's samples that could enter the hardest list (NaN losses never do)."""
    kept = len(ids) // 8
    pairs = zip(batch_losses, batch_ids, strict=True)
    if kept < HARDEST:
        return [(loss, i) for loss, i in pairs if not math.isnan(loss)]
    floor_id = unpack("q", ids[-8:])[0]
    floor = unpack("f", losses[-4:])[0]
    return [(loss, i) for loss, i in pairs if loss > floor or (loss == floor and i < floor_id)]


def inference_recorded(state: State, e: Event, d: dict[str, Any]) -> None:
    n, classes = d["n_samples"], d["num_classes"]
    if n < 1 or not 1 <= classes <= MAX_CLASSES:
        raise InvalidInput(
            f"inference batch of {n} samples over {classes} classes is invalid: a batch has "
            f"at least one sample and 1 to {MAX_CLASSES} classes"
        )
    n_epoch = d["n_epoch"]
    if n_epoch is not None and n_epoch < 0:
        raise InvalidInput(f"n_epoch {n_epoch} is invalid: epochs are integers >= 0 or None")
    ids = _field("q", d["input_ids"], n, "input_ids")
    labels = _field("i", d["labels"], n, "labels")
    predictions = _field("i", d["predictions"], n, "predictions")
    losses = _field("f", d["losses"], n, "losses")
    confidences = _field("f", d["confidences"], n, "confidences")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if min(values) < 0 or max(values) >= classes:
            raise InvalidInput(
                f"inference batch {name} range from {min(values)} to {max(values)}: "
                f"classes are 0 to {classes - 1}"
            )

    key = (e.namespace, d["model"], d["run"], d["dataset_type"], epoch_key(n_epoch))
    row: EpochRow | None = state.get(EPOCHS, key)
    if row is None:
        empty = b""
        row = EpochRow(
            *key, 0, 0, 0, 0, 0.0, 0.0, 0, *(empty,) * 5, e.stream_version, 0, 0, e.recorded_at, 0
        )

    loss_sum, confidence_sum = sum(losses), sum(confidences)
    scored = n
    if not (math.isfinite(loss_sum) and math.isfinite(confidence_sum)):
        finite = [
            (loss, conf)
            for loss, conf in zip(losses, confidences, strict=True)
            if math.isfinite(loss) and math.isfinite(conf)
        ]
        scored = len(finite)
        loss_sum = sum(loss for loss, _ in finite)
        confidence_sum = sum(conf for _, conf in finite)

    right = [label for label, p in zip(labels, predictions, strict=True) if label == p]
    width = max(classes, row.num_classes)
    hardest_ids, hardest_losses = _merge_hardest(
        row.hardest_ids,
        row.hardest_losses,
        _hard_candidates(row.hardest_ids, row.hardest_losses, ids, losses),
    )
    state.put(
        EPOCHS,
        row._replace(
            batches=row.batches + 1,
            n_samples=row.n_samples + n,
            correct=row.correct + len(right),
            scored=row.scored + scored,
            loss_sum=row.loss_sum + loss_sum,
            confidence_sum=row.confidence_sum + confidence_sum,
            num_classes=width,
            label_counts=_add_counts(row.label_counts, width, Counter(labels)),
            correct_counts=_add_counts(row.correct_counts, width, Counter(right)),
            predicted_counts=_add_counts(row.predicted_counts, width, Counter(predictions)),
            hardest_ids=hardest_ids,
            hardest_losses=hardest_losses,
            last_seq=e.stream_version,
            last_position=e.position,
            last_at=e.recorded_at,
        ),
    )


EPOCH_PROJECTION = Projection("epochs", (EPOCHS,), {"InferenceBatchRecorded": inference_recorded})


# -- the read side ----------------------------------------------------------------------


@dataclass(frozen=True)
class ClassStats:
    """One class in an evaluation: samples labelled with it, how many of those were
    predicted right, and how many samples of any label were predicted as it."""

    n_samples: int
    correct: int
    predicted: int

    @property
    def accuracy(self) -> float | None:
        """Recall of the class: correct / samples labelled with it."""
        return self.correct / self.n_samples if self.n_samples else None

    @property
    def precision(self) -> float | None:
        return self.correct / self.predicted if self.predicted else None


@dataclass(frozen=True)
class Evaluation:
    """Aggregates of the batches recorded for one epoch of a run (one dataset type, or
    all of them when ``dataset_type`` is None)."""

    namespace: str
    model: str
    run: str
    dataset_type: str | None
    n_epoch: int | None
    n_samples: int
    batches: int
    correct: int
    accuracy: float
    loss: float | None
    """Mean per-sample loss over samples whose loss was finite (None when none was)."""
    confidence: float | None
    per_class: dict[int, ClassStats]
    hardest: list[int]
    """Input ids of the highest loss, highest first."""
    hardest_losses: list[float]
    first_recorded: datetime
    last_recorded: datetime
    first_seq: int
    last_seq: int


LatestEpoch = Literal["latest"]


def epoch_rows(
    query: Query,
    namespace: str,
    model: str,
    run: str,
    dataset_type: str | None = None,
    *,
    stored_epoch: int | None = None,
) -> list[EpochRow]:
    """The run's epoch rows (of one dataset type, or all; of one epoch by its stored key
    ``epoch_key(n_epoch)``, or all), in recording order."""
    sql = f"SELECT {', '.join(EPOCHS.columns)} FROM epochs WHERE namespace = ? AND model = ? "
    sql += "AND run = ?"
    params: list[Any] = [namespace, model, run]
    if dataset_type is not None:
        sql += " AND dataset_type = ?"
        params.append(dataset_type)
    if stored_epoch is not None:
        sql += " AND n_epoch = ?"
        params.append(stored_epoch)
    return [EpochRow._make(r) for r in query.rows(sql + " ORDER BY first_seq", params)]


def latest_epoch(
    query: Query, namespace: str, model: str, run: str, dataset_type: str | None = None
) -> int | None:
    """The epoch of the run's most recently recorded batch (of one dataset type, or any)."""
    sql = (
        "SELECT n_epoch FROM epochs WHERE namespace = ? AND model = ? AND run = ?"
        + ("" if dataset_type is None else " AND dataset_type = ?")
        + " ORDER BY last_seq DESC LIMIT 1"
    )
    params = [namespace, model, run, *([] if dataset_type is None else [dataset_type])]
    found = query.one(sql, params)
    if found is None:
        raise NotFound(
            f"run {run!r} of {namespace}/{model} has no recorded inference batches"
            + ("" if dataset_type is None else f" of dataset type {dataset_type!r}")
        )
    return epoch_value(int(found[0]))


def evaluate(
    query: Query,
    namespace: str,
    model: str,
    run: str,
    n_epoch: int | LatestEpoch | None = None,
    dataset_type: str | None = None,
) -> Evaluation:
    """Combines the rows of one epoch: a few rows read, whatever the samples recorded."""
    if n_epoch == "latest":
        n_epoch = latest_epoch(query, namespace, model, run, dataset_type)
    elif n_epoch is not None and (
        isinstance(n_epoch, bool) or not isinstance(n_epoch, int) or n_epoch < 0
    ):
        raise InvalidInput(
            f"n_epoch {n_epoch!r} is invalid: use an integer >= 0, None (data recorded "
            "without an epoch) or 'latest'"
        )
    rows = epoch_rows(query, namespace, model, run, dataset_type, stored_epoch=epoch_key(n_epoch))
    if not rows:
        which = "" if dataset_type is None else f" of dataset type {dataset_type!r}"
        raise NotFound(
            f"run {run!r} of {namespace}/{model} has no inference batches{which} recorded "
            f"with n_epoch={n_epoch!r}"
        )
    return combine(rows, dataset_type)


def combine(rows: Sequence[EpochRow], dataset_type: str | None) -> Evaluation:
    first = rows[0]
    n_samples = sum(r.n_samples for r in rows)
    correct = sum(r.correct for r in rows)
    scored = sum(r.scored for r in rows)
    width = max(r.num_classes for r in rows)
    counts = {
        name: _sum_counts([getattr(r, name) for r in rows], width)
        for name in ("label_counts", "correct_counts", "predicted_counts")
    }
    ids, losses = rows[0].hardest_ids, rows[0].hardest_losses
    for row in rows[1:]:
        ids, losses = _merge_hardest(
            ids,
            losses,
            zip(unpack("f", row.hardest_losses), unpack("q", row.hardest_ids), strict=True),
        )
    return Evaluation(
        namespace=first.namespace,
        model=first.model,
        run=first.run,
        dataset_type=dataset_type,
        n_epoch=epoch_value(first.n_epoch),
        n_samples=n_samples,
        batches=sum(r.batches for r in rows),
        correct=correct,
        accuracy=correct / n_samples,
        loss=sum(r.loss_sum for r in rows) / scored if scored else None,
        confidence=sum(r.confidence_sum for r in rows) / scored if scored else None,
        per_class={
            cls: ClassStats(int(labelled), int(right), int(predicted))
            for cls, (labelled, right, predicted) in enumerate(
                zip(
                    counts["label_counts"],
                    counts["correct_counts"],
                    counts["predicted_counts"],
                    strict=True,
                )
            )
            if labelled or predicted
        },
        hardest=list(unpack("q", ids)),
        hardest_losses=list(unpack("f", losses)),
        first_recorded=to_datetime(min(r.first_at for r in rows)),
        last_recorded=to_datetime(max(r.last_at for r in rows)),
        first_seq=min(r.first_seq for r in rows),
        last_seq=max(r.last_seq for r in rows),
    )


def _sum_counts(packed: Sequence[bytes], width: int) -> list[int]:
    total = [0] * width
    for data in packed:
        for cls, count in enumerate(unpack("q", data)):
            total[cls] += count
    return total
