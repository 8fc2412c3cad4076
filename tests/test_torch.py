"""The torch integration: the seed's model_name / version_name / n_epoch rules as a
trainer meets them, weights round trips, and the tracer's numbers."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import require_package

torch = require_package("torch")
nn = torch.nn
F = torch.nn.functional

import modeltrail as mt  # noqa: E402
from modeltrail.core.projections.epochs import unpack  # noqa: E402
from modeltrail.errors import (  # noqa: E402
    ArchitectureMismatch,
    InvalidInput,
    NotFound,
    RunConfigConflict,
)
from modeltrail.producers.torch import (  # noqa: E402
    ClassificationTracer,
    Evaluator,
    arch_hash,
    load_model,
    log_model,
)
from tests.conftest import ManualClock  # noqa: E402

DAY = 86_400.0
CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def small_cnn(classes: int = 3, width: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(width * 4, classes),
    )


def data(n: int = 16, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 1, 8, 8), torch.randint(0, classes, (n,))


@pytest.fixture
def tracers() -> Iterator[list[ClassificationTracer]]:
    made: list[ClassificationTracer] = []
    yield made
    for tracer in made:
        tracer.close()


def tracer_for(
    made: list[ClassificationTracer], model: nn.Module, reg: mt.Registry, **kwargs: object
) -> ClassificationTracer:
    run = kwargs.pop("run", "v1")
    tracer = ClassificationTracer(model, "cnn", run, reg, **kwargs)  # type: ignore[arg-type]
    made.append(tracer)
    return tracer


# -- architecture hash ------------------------------------------------------------------


def test_arch_hash_ignores_weights_and_device() -> None:
    a, b = small_cnn(), small_cnn()
    assert not torch.equal(a[0].weight, b[0].weight)
    assert arch_hash(a) == arch_hash(b)
    assert arch_hash(a) == arch_hash(small_cnn().to("meta"))  # no storage at all
    if CUDA:
        assert arch_hash(a) == arch_hash(small_cnn().cuda())


@pytest.mark.parametrize(
    "other",
    [
        lambda: small_cnn(classes=4),  # a shape
        lambda: small_cnn().double(),  # a dtype
        lambda: small_cnn(width=5),  # every shape after the first layer
        lambda: nn.Sequential(*list(small_cnn())[:2], nn.GELU(), *list(small_cnn())[3:]),
    ],
)
def test_arch_hash_sees_shapes_dtypes_and_layer_types(other: object) -> None:
    assert arch_hash(other()) != arch_hash(small_cnn())  # type: ignore[operator]


def test_arch_hash_looks_through_compile_wrappers() -> None:
    model = small_cnn()
    assert arch_hash(nn.DataParallel(model)) == arch_hash(model)


def test_lazy_modules_must_be_initialized_first() -> None:
    with pytest.raises(InvalidInput, match="not initialized"):
        arch_hash(nn.Sequential(nn.LazyLinear(3)))


# -- weights as versions ----------------------------------------------------------------


def test_log_and_load_round_trip_the_weights(reg: mt.Registry) -> None:
    model = small_cnn()
    model(data()[0])  # moves the BatchNorm running statistics
    version = log_model(reg, model, "cnn", aliases=["candidate"], metadata={"val_acc": 0.5})
    assert version is not None
    assert (version.label, version.arch_hash) == ("v0", arch_hash(model))
    assert version.metadata["val_acc"] == 0.5
    assert [f.path for f in version.files] == ["model.pt"]
    fresh = small_cnn()
    load_model(reg, "cnn:candidate", fresh)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert [e.type for e in reg.audit(types=["VersionDownloaded"])] == ["VersionDownloaded"]


def test_the_same_weights_make_no_new_version(reg: mt.Registry) -> None:
    model = small_cnn()
    first = log_model(reg, model, "cnn")
    again = log_model(reg, model, "cnn")
    assert first is not None and again is not None
    assert again.label == first.label == "v0"
    with torch.no_grad():
        model[-1].bias.add_(1.0)
    changed = log_model(reg, model, "cnn")
    assert changed is not None and changed.label == "v1"


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_weights_logged_on_cuda_load_on_the_cpu_and_back(reg: mt.Registry) -> None:
    model = small_cnn().cuda()
    log_model(reg, model, "cnn")
    on_cpu = load_model(reg, "cnn", small_cnn())
    assert next(on_cpu.parameters()).device.type == "cpu"
    on_gpu = load_model(reg, "cnn", small_cnn().cuda())
    assert next(on_gpu.parameters()).device.type == "cuda"
    assert torch.equal(on_gpu[0].weight, model[0].weight)
    assert log_model(reg, on_cpu, "cnn").label == "v0"  # type: ignore[union-attr]


def test_a_second_architecture_under_a_model_name_is_refused(reg: mt.Registry) -> None:
    log_model(reg, small_cnn(), "cnn")
    with pytest.raises(ArchitectureMismatch, match="new model name"):
        log_model(reg, small_cnn(classes=10), "cnn")
    with pytest.raises(ArchitectureMismatch, match=arch_hash(small_cnn(classes=10))):
        ClassificationTracer(small_cnn(classes=10), "cnn", "v1", reg, background=False)
    with pytest.raises(ArchitectureMismatch, match="Sequential given"):
        load_model(reg, "cnn", small_cnn(classes=10))
    assert log_model(reg, small_cnn(classes=10), "cnn_10_classes") is not None


def test_the_tracer_binds_the_architecture_on_first_use(
    reg: mt.Registry, tracers: list[ClassificationTracer]
) -> None:
    tracer_for(tracers, small_cnn(), reg)
    assert reg.model("cnn").arch_hash == arch_hash(small_cnn())
    with pytest.raises(ArchitectureMismatch):
        log_model(reg, small_cnn(width=8), "cnn")


def test_a_version_logged_by_a_run_at_an_epoch_carries_both(
    reg: mt.Registry, tracers: list[ClassificationTracer]
) -> None:
    model = small_cnn()
    tracer = tracer_for(tracers, model, reg)
    version = log_model(reg, model, "cnn", run=tracer.run, epoch=3)
    assert version is not None and (version.run, version.epoch) == ("v1", 3)
    assert reg.lineage(version.ref).run.name == "v1"  # type: ignore[union-attr]
    other = reg.run("other", "x")
    with pytest.raises(InvalidInput, match="its own model"):
        log_model(reg, model, "cnn", run=other)


# -- runs: resume and conflicts ---------------------------------------------------------


def test_reusing_a_version_name_resumes_and_appends(
    reg: mt.Registry, tracers: list[ClassificationTracer]
) -> None:
    model = small_cnn()
    first = tracer_for(tracers, model, reg, config={"lr": 0.01})
    assert first.run.resumed is False
    for epoch in range(2):
        first(*data(), n_epoch=epoch)
    first.close()
    again = tracer_for(tracers, model, reg, config={"lr": 0.01})
    assert again.run.resumed is True
    again(*data(), n_epoch=1)
    again(*data(), n_epoch=2)
    evaluator = Evaluator("cnn", "v1", reg)
    assert evaluator.request_evaluation(n_epoch=1).n_samples == 32
    assert evaluator.request_evaluation(n_epoch="latest").n_epoch == 2
    assert [r.name for r in reg.runs("cnn")] == ["v1"]
    assert reg.run_info("cnn", "v1").resumes == 1


def test_reusing_a_version_name_with_other_conditions_is_refused(
    reg: mt.Registry, tracers: list[ClassificationTracer]
) -> None:
    tracer_for(tracers, small_cnn(), reg, config={"lr": 0.001})
    with pytest.raises(RunConfigConflict, match="new run name"):
        tracer_for(tracers, small_cnn(), reg, config={"lr": 0.01})
    allowed = tracer_for(tracers, small_cnn(), reg, config={"lr": 0.01}, allow_config_change=True)
    assert allowed.run.resumed is True
    other = tracer_for(tracers, small_cnn(), reg, config={"lr": 0.01}, run="v1_lr001")
    assert other.run.resumed is False


def test_run_metrics_carry_step_and_wall_clock(reg: mt.Registry, clock: ManualClock) -> None:
    with reg.run("cnn", "v1", config={"lr": 0.1}) as run:
        assert run.log_metrics({"loss": 0.5, "acc": torch.tensor(0.25)}, step=1) is True
        clock.advance(90)
        run.log_metrics({"loss": 0.25}, step=2)
        run.use(log_model(reg, small_cnn(), "pretrained").ref)  # type: ignore[union-attr]
        produced = run.log_version({"model.pt": b"weights"}, epoch=1)
    assert produced.epoch == 1
    assert reg.lineage(produced.ref).inputs == ["team/pretrained:v0"]
    metrics = reg.metrics("cnn", "v1")
    assert [(k, s, v) for k, s, v, _ in metrics] == [
        ("acc", 1, 0.25),
        ("loss", 1, 0.5),
        ("loss", 2, 0.25),
    ]
    assert (metrics[2][3] - metrics[1][3]).total_seconds() == pytest.approx(90, abs=0.01)
    assert reg.run_info("cnn", "v1").status == "finished"
    with pytest.raises(InvalidInput, match="metrics are numbers"):
        reg.run("cnn", "v1", config={"lr": 0.1}).log_metrics({"loss": "high"})


# -- the tracer's numbers ---------------------------------------------------------------


@pytest.mark.parametrize("background", [True, False])
def test_recorded_accuracy_equals_accuracy_from_the_same_outputs(
    reg: mt.Registry, tracers: list[ClassificationTracer], background: bool
) -> None:
    model = small_cnn(classes=5)
    tracer = tracer_for(tracers, model, reg, background=background)
    outputs, labels, ids = [], [], []
    for step in range(6):
        x, y = data(24, classes=5)
        idx = torch.arange(step * 24, step * 24 + 24)
        out = tracer(x, y, input_ids=idx, dataset_type="train", n_epoch=0)
        outputs.append(out.detach())
        labels.append(y)
        ids.append(idx)
    logits, target, input_ids = torch.cat(outputs), torch.cat(labels), torch.cat(ids)
    result = Evaluator("cnn", "v1", reg).request_evaluation(n_epoch=0, dataset_type="train")
    direct = int((logits.argmax(dim=1) == target).sum()) / len(target)
    assert result.n_samples == 144
    assert result.accuracy == direct
    per_sample = F.cross_entropy(logits, target, reduction="none")
    assert result.loss == pytest.approx(per_sample.mean().item(), rel=1e-5)
    confidence = logits.softmax(dim=1).max(dim=1).values.mean().item()
    assert result.confidence == pytest.approx(confidence, rel=1e-5)
    for cls in range(5):
        stats = result.per_class[cls]
        assert stats.n_samples == int((target == cls).sum())
        assert stats.correct == int(((target == cls) & (logits.argmax(1) == cls)).sum())
    top = input_ids[per_sample.argsort(descending=True, stable=True)][:5].tolist()
    assert result.hardest[:5] == top


def test_the_tracer_keeps_no_autograd_graph_alive(
    reg: mt.Registry, tracers: list[ClassificationTracer], monkeypatch: pytest.MonkeyPatch
) -> None:
    tracer = tracer_for(tracers, small_cnn(), reg, background=False)
    kept: list[object] = []
    record = tracer._record
    monkeypatch.setattr(tracer, "_record", lambda batches: (kept.extend(batches), record(batches)))
    x, y = data()
    out = tracer(x, y)
    assert out.grad_fn is not None  # the trainer still gets its graph
    (traced,) = kept
    assert not traced.host.requires_grad and traced.host.grad_fn is None
    output = weakref.ref(out)
    del out
    gc.collect()
    assert output() is None  # nothing of the tracer holds the outputs


def test_without_ids_samples_are_numbered_in_the_order_seen(
    reg: mt.Registry, tracers: list[ClassificationTracer]
) -> None:
    tracer = tracer_for(tracers, small_cnn(), reg, background=False)
    tracer(*data(4), n_epoch=0)
    tracer(*data(4), n_epoch=0)
    events = list(reg.events(types=["InferenceBatchRecorded"]))
    from modeltrail.core.projections.epochs import unpack

    assert [list(unpack("q", e.data["input_ids"])) for e in events] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
    ]


def test_n_epoch_none_then_an_epoch_as_in_the_seed(
    reg: mt.Registry, tracers: list[ClassificationTracer]
) -> None:
    tracer = tracer_for(tracers, small_cnn(), reg)
    x, y = data(10)
    tracer(x, y, input_ids=torch.arange(10), dataset_type="train")  # internally n_epoch=None
    tracer(*data(6), input_ids=torch.arange(6), dataset_type="train", n_epoch=1)
    evaluator = Evaluator("cnn", "v1", reg)
    untagged = evaluator.request_evaluation(n_epoch=None)
    assert (untagged.n_epoch, untagged.n_samples) == (None, 10)
    assert evaluator.request_evaluation(n_epoch=1).n_samples == 6
    assert evaluator.request_evaluation(n_epoch="latest").n_epoch == 1


def test_latest_after_a_restart_is_the_last_recorded_epoch(
    reg: mt.Registry, clock: ManualClock, tracers: list[ClassificationTracer]
) -> None:
    model = small_cnn()
    january = tracer_for(tracers, model, reg)
    for epoch in range(10):
        january(*data(4), n_epoch=epoch)
    january.close()
    clock.advance(59 * DAY)
    march = tracer_for(tracers, model, reg)
    for epoch in range(5):
        march(*data(4), n_epoch=epoch)
    evaluator = Evaluator("cnn", "v1", reg)
    assert evaluator.request_evaluation(n_epoch="latest").n_epoch == 4
    assert evaluator.request_evaluation(n_epoch=9).n_samples == 4
    order = [(e.n_epoch, e.n_samples) for e in evaluator.epochs()]
    assert order == [(0, 8), (1, 8), (2, 8), (3, 8), (4, 8), (5, 4), (6, 4), (7, 4), (8, 4), (9, 4)]


def test_dataset_types_are_kept_apart_by_the_tracer(
    reg: mt.Registry, tracers: list[ClassificationTracer]
) -> None:
    tracer = tracer_for(tracers, small_cnn(), reg)
    tracer(*data(8), dataset_type="train", n_epoch=0)
    with torch.no_grad():
        tracer(*data(3), dataset_type="validation", n_epoch=0)
    evaluator = Evaluator("cnn", "v1", reg)
    assert evaluator.request_evaluation(0, "train").n_samples == 8
    assert evaluator.request_evaluation(0, "validation").n_samples == 3
    assert evaluator.request_evaluation(0).n_samples == 11


def test_bad_tracer_input_is_refused_with_the_rule(
    reg: mt.Registry, tracers: list[ClassificationTracer]
) -> None:
    tracer = tracer_for(tracers, small_cnn(), reg, background=False)
    x, y = data(4)
    with pytest.raises(InvalidInput, match="class indices"):
        tracer(x, y.float())
    with pytest.raises(InvalidInput, match="one integer per sample"):
        tracer(x, y, input_ids=[1, 2])
    with pytest.raises(InvalidInput, match="classes are 0 to 2"):
        tracer(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(InvalidInput, match="epochs are integers"):
        tracer(x, y, n_epoch=-1)
    flat = ClassificationTracer(nn.Identity(), "flat", "v1", reg, background=False)
    with pytest.raises(InvalidInput, match=r"\[batch, classes\]"):
        flat(torch.randn(2, 3, 4), torch.tensor([0, 1]))
    assert list(reg.events(types=["InferenceBatchRecorded"])) == []


def test_a_background_error_is_raised_by_the_next_call(
    reg: mt.Registry, tracers: list[ClassificationTracer]
) -> None:
    tracer = tracer_for(tracers, small_cnn(), reg)
    tracer(data(4)[0], torch.tensor([0, 1, 2, 7]))
    with pytest.raises(InvalidInput, match="classes are 0 to 2"):
        tracer.flush()
    tracer(*data(4))
    tracer.flush()


def test_evaluator_of_a_missing_run_or_epoch_names_it(reg: mt.Registry) -> None:
    with pytest.raises(NotFound, match="run 'nope'"):
        Evaluator("cnn", "nope", reg).request_evaluation()
    reg.run("cnn", "v1")
    with pytest.raises(NotFound, match="no recorded inference batches"):
        Evaluator("cnn", "v1", reg).request_evaluation("latest")


def test_registry_none_opens_the_home_of_the_environment(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELTRAIL_HOME", str(home))
    monkeypatch.setenv("MODELTRAIL_ACTOR", "alice")
    with ClassificationTracer(small_cnn(), "cnn", "v1", background=False) as tracer:
        tracer(*data(5), n_epoch=0)
    assert Evaluator("cnn", "v1").request_evaluation(0).n_samples == 5
    assert mt.open(home, actor="alice").model("alice/cnn").arch_hash == arch_hash(small_cnn())


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_the_tracer_on_cuda_never_synchronises_the_training_thread(
    reg: mt.Registry, tracers: list[ClassificationTracer]
) -> None:
    model = small_cnn().cuda()
    tracer = tracer_for(tracers, model, reg)
    x, y = data(64)
    x, y = x.cuda(), y.cuda()
    ids = torch.arange(64, device="cuda")
    tracer(x, y, input_ids=ids, n_epoch=0)  # warm up (allocators, kernels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = tracer(x, y, input_ids=ids, n_epoch=0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    result = Evaluator("cnn", "v1", reg).request_evaluation(0)
    direct = int((out.argmax(1) == y).sum()) / len(y)
    assert result.n_samples == 128
    assert result.accuracy == direct


def test_a_batch_over_the_event_limit_is_split_in_order(
    reg: mt.Registry, tracers: list[ClassificationTracer], monkeypatch: pytest.MonkeyPatch
) -> None:
    import modeltrail.producers.torch as integration

    monkeypatch.setattr(integration, "MAX_EVENT_SAMPLES", 4)
    tracer = tracer_for(tracers, small_cnn(), reg, background=False)
    writes = count_writes(reg, monkeypatch)
    tracer(*data(10), input_ids=torch.arange(10), n_epoch=0)
    events = list(reg.events(types=["InferenceBatchRecorded"]))
    assert [e.data["n_samples"] for e in events] == [4, 4, 2]
    assert len(writes) == 1  # the parts of one batch are written together
    assert Evaluator("cnn", "v1", reg).request_evaluation(0).n_samples == 10


def test_batches_waiting_for_the_recorder_go_in_one_write(
    reg: mt.Registry, tracers: list[ClassificationTracer], monkeypatch: pytest.MonkeyPatch
) -> None:
    tracer = tracer_for(tracers, small_cnn(), reg)
    started, release = threading.Event(), threading.Event()
    writes = count_writes(reg, monkeypatch, started=started, release=release)
    try:
        tracer(*data(2), input_ids=[0, 1], n_epoch=0)
        assert started.wait(60)  # the recorder is in its first write
        for step in range(1, 6):
            tracer(*data(2), input_ids=[2 * step, 2 * step + 1], n_epoch=0)
    finally:
        release.set()
    tracer.flush()
    assert len(writes) == 2  # the first batch, then the five that waited meanwhile
    events = list(reg.events(types=["InferenceBatchRecorded"]))
    assert [list(unpack("q", e.data["input_ids"])) for e in events] == [
        [2 * i, 2 * i + 1] for i in range(6)
    ]


def test_a_bad_batch_among_waiting_ones_keeps_the_others(
    reg: mt.Registry, tracers: list[ClassificationTracer], monkeypatch: pytest.MonkeyPatch
) -> None:
    tracer = tracer_for(tracers, small_cnn(), reg)
    started, release = threading.Event(), threading.Event()
    count_writes(reg, monkeypatch, started=started, release=release)
    try:
        tracer(*data(2), input_ids=[0, 1], n_epoch=0)
        assert started.wait(60)
        tracer(data(2)[0], torch.tensor([0, 7]), input_ids=[2, 3], n_epoch=0)
        tracer(*data(2), input_ids=[4, 5], n_epoch=0)
    finally:
        release.set()
    with pytest.raises(InvalidInput, match="classes are 0 to 2"):
        tracer.flush()
    events = list(reg.events(types=["InferenceBatchRecorded"]))
    assert [list(unpack("q", e.data["input_ids"])) for e in events] == [[0, 1], [4, 5]]


def count_writes(
    reg: mt.Registry,
    monkeypatch: pytest.MonkeyPatch,
    *,
    started: threading.Event | None = None,
    release: threading.Event | None = None,
) -> list[int]:
    """The registry's writes, each as its number of events; with ``started`` and
    ``release``, the first write signals ``started`` and waits for ``release``."""
    engine = reg._require_engine()
    write = engine.write
    writes: list[int] = []

    def counted(decide: Any, *, actor: str) -> Any:
        if started is not None and release is not None and not writes:
            started.set()
            release.wait()
        result, events = write(decide, actor=actor)
        writes.append(len(events))
        return result, events

    monkeypatch.setattr(engine, "write", counted)
    return writes


def test_each_new_model_name_takes_one_of_the_quota(
    reg: mt.Registry, tracers: list[ClassificationTracer]
) -> None:
    reg.set_quota("team", 1)
    tracer_for(tracers, small_cnn(), reg)
    tracer_for(tracers, small_cnn(), reg, run="v2")  # a new version_name: no new model
    with pytest.raises(mt.errors.QuotaExceeded, match="quota is 1"):
        ClassificationTracer(small_cnn(), "another_model", "v1", reg, background=False)
