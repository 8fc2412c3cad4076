"""The epoch projection: the seed's n_epoch rules, aggregates, and live == rebuild."""

from __future__ import annotations

import math
import struct
import tempfile
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modeltrail as mt
from modeltrail.core import commands as cmd
from modeltrail.core.events.codec import default_codec
from modeltrail.core.events.envelope import EMPTY_STREAM, Draft
from modeltrail.core.events.seal import Sealer
from modeltrail.core.projections.catalog import default_projections
from modeltrail.core.projections.epochs import (
    EPOCHS,
    HARDEST,
    NO_EPOCH,
    Evaluation,
    evaluate,
    latest_epoch,
    pack,
)
from modeltrail.core.projections.fold import Folder
from modeltrail.core.projections.state import MemoryState
from modeltrail.errors import InvalidInput, InvalidName, NotFound, PermissionDenied
from tests.conftest import ManualClock

DAY = 86_400.0


def make_batch(
    labels: Sequence[int],
    predictions: Sequence[int] | None = None,
    losses: Sequence[float] | None = None,
    ids: Sequence[int] | None = None,
    *,
    dataset_type: str = "train",
    n_epoch: int | None = None,
    classes: int = 3,
    confidences: Sequence[float] | None = None,
) -> dict[str, Any]:
    n = len(labels)
    return {
        "dataset_type": dataset_type,
        "n_epoch": n_epoch,
        "n_samples": n,
        "num_classes": classes,
        "input_ids": pack("q", ids if ids is not None else range(n)),
        "labels": pack("i", labels),
        "predictions": pack("i", predictions if predictions is not None else labels),
        "losses": pack("f", losses if losses is not None else [0.5] * n),
        "confidences": pack("f", confidences if confidences is not None else [0.9] * n),
    }


def record(reg: mt.Registry, batch: dict[str, Any], model: str = "m", run: str = "r") -> None:
    reg._write(lambda b: cmd.record_inference(b, reg.namespace, model, run, batch))


def evaluation(reg: mt.Registry, n_epoch: Any = None, dataset_type: str | None = None) -> Any:
    return evaluate(reg._read.query, reg.namespace, "m", "r", n_epoch, dataset_type)


@pytest.fixture
def run_reg(reg: mt.Registry) -> mt.Registry:
    reg.run("m", "r", config={"lr": 0.1})
    return reg


def test_batches_go_to_the_runs_inference_stream(run_reg: mt.Registry) -> None:
    record(run_reg, make_batch([0, 1, 2]))
    (event,) = run_reg.events(types=["InferenceBatchRecorded"])
    assert event.stream == "inference:team/m/r"
    assert event.stream_version == 0
    assert event.data["n_samples"] == 3


def test_n_epoch_none_is_its_own_epoch_and_stays_addressable(run_reg: mt.Registry) -> None:
    record(run_reg, make_batch([0, 1, 2, 0]))  # no n_epoch: stored as None
    record(run_reg, make_batch([1, 1], predictions=[0, 0], n_epoch=1))
    untagged = evaluation(run_reg, None)
    assert (untagged.n_epoch, untagged.n_samples, untagged.accuracy) == (None, 4, 1.0)
    first = evaluation(run_reg, 1)
    assert (first.n_epoch, first.n_samples, first.accuracy) == (1, 2, 0.0)
    assert evaluation(run_reg, "latest").n_epoch == 1
    stored = {row[4] for row in run_reg._read.query.rows("SELECT * FROM epochs")}
    assert stored == {NO_EPOCH, 1}


def test_latest_follows_recording_order_in_the_restart_case(
    run_reg: mt.Registry, clock: ManualClock
) -> None:
    for epoch in range(10):  # January
        record(run_reg, make_batch([0, 1], n_epoch=epoch))
    clock.advance(60 * DAY)  # March: the same run restarts from epoch 0
    for epoch in range(5):
        record(run_reg, make_batch([2, 2, 2], n_epoch=epoch))
    latest = evaluation(run_reg, "latest")
    assert latest.n_epoch == 4
    assert latest.n_samples == 5  # epoch 4 of January and of March: the run appends
    assert evaluation(run_reg, 9).n_samples == 2
    assert latest_epoch(run_reg._read.query, "team", "m", "r") == 4


def test_dataset_types_are_kept_apart(run_reg: mt.Registry) -> None:
    record(run_reg, make_batch([0, 0, 0, 0], dataset_type="train", n_epoch=3))
    record(run_reg, make_batch([1, 1], predictions=[1, 0], dataset_type="val", n_epoch=2))
    train = evaluation(run_reg, 3, "train")
    val = evaluation(run_reg, 2, "val")
    assert (train.n_samples, train.accuracy) == (4, 1.0)
    assert (val.n_samples, val.accuracy, val.dataset_type) == (2, 0.5, "val")
    with pytest.raises(NotFound, match="dataset type 'val'"):
        evaluation(run_reg, 3, "val")
    assert evaluation(run_reg, "latest").n_epoch == 2  # any dataset type: val came last
    assert evaluation(run_reg, "latest", "train").n_epoch == 3


def test_no_dataset_type_combines_the_types_of_one_epoch(run_reg: mt.Registry) -> None:
    record(run_reg, make_batch([0, 0], losses=[1.0, 3.0], ids=[10, 11], dataset_type="train"))
    record(run_reg, make_batch([1], predictions=[0], losses=[5.0], ids=[20], dataset_type="val"))
    both = evaluation(run_reg, None, None)
    assert (both.n_samples, both.correct, both.dataset_type) == (3, 2, None)
    assert both.loss == pytest.approx(3.0)
    assert both.hardest == [20, 11, 10]


def test_per_class_counts_and_hardest_inputs(run_reg: mt.Registry) -> None:
    record(
        run_reg,
        make_batch(
            labels=[0, 0, 1, 2, 2],
            predictions=[0, 1, 1, 2, 0],
            losses=[0.1, 2.0, 0.3, 0.2, 4.0],
            ids=[100, 101, 102, 103, 104],
            n_epoch=0,
        ),
    )
    result = evaluation(run_reg, 0)
    assert result.accuracy == pytest.approx(3 / 5)
    assert result.loss == pytest.approx((0.1 + 2.0 + 0.3 + 0.2 + 4.0) / 5, rel=1e-6)
    assert {c: (s.n_samples, s.correct, s.predicted) for c, s in result.per_class.items()} == {
        0: (2, 1, 2),
        1: (1, 1, 2),
        2: (2, 1, 1),
    }
    assert result.per_class[2].accuracy == 0.5
    assert result.hardest[:3] == [104, 101, 102]


def test_hardest_keeps_each_id_once_at_its_highest_loss(run_reg: mt.Registry) -> None:
    record(run_reg, make_batch([0, 0], losses=[1.0, 2.0], ids=[7, 8], n_epoch=0))
    record(run_reg, make_batch([0, 0], losses=[3.0, 0.5], ids=[8, 7], n_epoch=0))
    result = evaluation(run_reg, 0)
    assert result.hardest == [8, 7]
    assert result.hardest_losses == [3.0, 1.0]


def test_hardest_is_bounded(run_reg: mt.Registry) -> None:
    n = HARDEST * 3
    losses = [float(i % 50) for i in range(n)]
    record(run_reg, make_batch([0] * n, losses=losses, ids=range(n), n_epoch=0))
    result = evaluation(run_reg, 0)
    assert len(result.hardest) == HARDEST
    assert result.hardest_losses == sorted(result.hardest_losses, reverse=True)
    assert result.hardest_losses[0] == 49.0


def test_non_finite_losses_count_for_accuracy_not_for_the_mean_loss(
    run_reg: mt.Registry,
) -> None:
    record(run_reg, make_batch([0, 1, 2], losses=[1.0, math.nan, 3.0], ids=[1, 2, 3]))
    result = evaluation(run_reg)
    assert (result.n_samples, result.accuracy) == (3, 1.0)
    assert result.loss == pytest.approx(2.0)
    assert 2 not in result.hardest


@pytest.mark.parametrize(
    ("batch", "error", "rule"),
    [
        (make_batch([0, 3]), InvalidInput, "classes are 0 to 2"),
        (make_batch([0, 1], predictions=[0, -1]), InvalidInput, "classes are 0 to 2"),
        ({**make_batch([0, 1]), "losses": b"\x00" * 4}, InvalidInput, "not 8"),
        (make_batch([0], dataset_type="no spaces"), InvalidName, "dataset type"),
        (make_batch([0], n_epoch=-2), InvalidInput, "epochs are integers"),
        ({**make_batch([]), "n_samples": 0}, InvalidInput, "at least one sample"),
    ],
)
def test_bad_batches_are_refused_with_the_rule(
    run_reg: mt.Registry, batch: dict[str, Any], error: type[Exception], rule: str
) -> None:
    with pytest.raises(error, match=rule):
        record(run_reg, batch)
    assert list(run_reg.events(types=["InferenceBatchRecorded"])) == []


def test_a_batch_for_a_missing_run_is_refused_by_the_command(reg: mt.Registry) -> None:
    reg.run("m", "r")
    with pytest.raises(NotFound, match="run 'other'"):
        record(reg, make_batch([0]), run="other")


def test_only_the_owner_records_in_a_personal_namespace(home: Any, clock: ManualClock) -> None:
    alice = mt.open(home, actor="alice", clock=clock)
    alice.run("m", "r")
    bob = mt.open(home, actor="bob", namespace="alice", clock=clock)
    with pytest.raises(PermissionDenied, match="owner 'alice'"):
        record(bob, make_batch([0]))
    alice.close()
    bob.close()


def test_the_fold_reads_no_registry_table() -> None:
    """Over Kafka an inference batch may be folded before its run's events: the fold must
    not depend on them."""
    codec = default_codec()
    event = Sealer(codec).seal(
        Draft(
            "InferenceBatchRecorded",
            "inference:ns/m/r",
            "ns",
            {"model": "m", "run": "r", **make_batch([0, 1, 1], n_epoch=2)},
        ),
        EMPTY_STREAM,
        actor="alice",
        recorded_at=1,
    )
    state = MemoryState()
    Folder(default_projections(), codec).apply(state, event)
    (row,) = state.rows(EPOCHS)
    assert (row.namespace, row.model, row.run, row.n_epoch, row.n_samples) == (
        "ns",
        "m",
        "r",
        2,
        3,
    )


def test_as_of_sees_the_epochs_of_that_moment(run_reg: mt.Registry) -> None:
    record(run_reg, make_batch([0, 0], n_epoch=0))
    then = run_reg.head()
    record(run_reg, make_batch([0, 0, 0], n_epoch=0))
    past = run_reg.as_of(then)
    assert evaluate(past._read.query, "team", "m", "r", 0).n_samples == 2
    assert evaluation(run_reg, 0).n_samples == 5


def test_an_invalid_epoch_request_names_the_rule(run_reg: mt.Registry) -> None:
    record(run_reg, make_batch([0]))
    with pytest.raises(InvalidInput, match="'latest'"):
        evaluation(run_reg, "last")
    with pytest.raises(NotFound, match="n_epoch=7"):
        evaluation(run_reg, 7)


# -- property: live folds equal a rebuild, and both equal a direct computation ---------


def reference(batches: list[dict[str, Any]], dataset_type: str, n_epoch: int | None) -> Any:
    """What an evaluation must say, computed sample by sample."""
    samples = [
        s
        for b in batches
        if b["dataset_type"] == dataset_type and b["n_epoch"] == n_epoch
        for s in zip(b["labels_"], b["predictions_"], b["losses_"], b["ids_"], strict=True)
    ]
    scored = [loss for _, _, loss, _ in samples if math.isfinite(loss)]
    best: dict[int, float] = {}
    for _, _, loss, input_id in samples:
        if not math.isnan(loss) and loss > best.get(input_id, -math.inf):
            best[input_id] = loss
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:HARDEST]
    return {
        "n_samples": len(samples),
        "correct": sum(label == p for label, p, _, _ in samples),
        "loss": sum(scored) / len(scored) if scored else None,
        "labels": {c: sum(label == c for label, _, _, _ in samples) for c in range(4)},
        "hardest": [i for i, _ in ranked],
    }


def summary(result: Evaluation) -> dict[str, Any]:
    return {
        "n_samples": result.n_samples,
        "correct": result.correct,
        "loss": result.loss,
        "labels": {
            c: result.per_class[c].n_samples if c in result.per_class else 0 for c in range(4)
        },
        "hardest": result.hardest,
    }


losses = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 2.0, math.inf, math.nan]),
    st.floats(0, 10, width=32),
)


@st.composite
def batches(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 12))
    labels = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    predictions = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    loss_values = draw(st.lists(losses, min_size=n, max_size=n))
    ids = draw(st.lists(st.integers(0, 40), min_size=n, max_size=n))
    batch = make_batch(
        labels,
        predictions,
        loss_values,
        ids,
        dataset_type=draw(st.sampled_from(["train", "val"])),
        n_epoch=draw(st.sampled_from([None, 0, 1, 2])),
        classes=4,
    )
    stored = [struct.unpack("<f", struct.pack("<f", v))[0] for v in loss_values]  # float32
    return {**batch, "labels_": labels, "predictions_": predictions, "losses_": stored, "ids_": ids}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(batches(), min_size=1, max_size=10))
def test_live_folds_equal_a_rebuild_and_a_direct_computation(
    recorded: list[dict[str, Any]],
) -> None:
    with tempfile.TemporaryDirectory() as home:
        reg = mt.open(home, actor="alice", namespace="team", clock=ManualClock())
        reg.run("m", "r")
        for b in recorded:
            record(reg, {k: v for k, v in b.items() if not k.endswith("_")})
        live = reg.export()
        for dataset_type in ("train", "val"):
            for n_epoch in (None, 0, 1, 2):
                expected = reference(recorded, dataset_type, n_epoch)
                if expected["n_samples"] == 0:
                    continue
                got = summary(evaluation(reg, n_epoch, dataset_type))
                loss, expected_loss = got.pop("loss"), expected.pop("loss")
                if expected_loss is None:
                    assert loss is None
                else:
                    assert loss == pytest.approx(expected_loss, rel=1e-9)
                assert got == expected
        reg.rebuild()
        assert reg.export() == live
        assert reg.verify().ok
        reg.close()
