"""``modeltrail demo``: a short tour on an embedded home, offline, in well under a minute.

A trainer trains a small CNN on synthetic images made here, tracing every batch and
logging a checkpoint per epoch, and moves ``best`` when validation accuracy improves.
CI links the best checkpoint into a registered model as ``production``; a mistaken
promotion is rolled back. Then the auditor's questions: the epoch table, the evaluation
of the latest epoch, alias histories, the audit trail, the registry as it was before the
rollback, and a verification of every hash chain and projection.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

import modeltrail
from modeltrail.core.events.envelope import Event, to_datetime

if TYPE_CHECKING:
    from modeltrail.registry import Registry

console = Console()
MODEL = "shapes-cnn"
RUN = "baseline"
CONFIG = {"lr": 0.05, "momentum": 0.9, "batch": 64, "seed": 0}
EPOCHS = 4
CLASSES = ("horizontal", "vertical", "diagonal")


def run_demo(options: dict[str, Any], *, fresh: bool) -> None:
    home = Path(options.get("home") or ".modeltrail/demo")
    if fresh and home.exists():
        shutil.rmtree(home)
    settings = {k: v for k, v in options.items() if k not in ("home", "actor", "namespace") and v}
    trainer = modeltrail.open(home, actor="alice", namespace="vision", **settings)
    ci = modeltrail.open(home, actor="ci-bot", namespace="vision", **settings)

    console.rule("[bold]1. a trainer trains a small CNN, tracing every batch")
    best = _train(trainer)

    console.rule("[bold]2. CI promotes the best checkpoint through a registered model")
    ci.link(f"{MODEL}:best", "shape-classifier", aliases=["production"])
    console.print(f"shape-classifier:production -> {ci.get('shape-classifier:production').ref}")
    ci.link(f"{MODEL}:v0", "shape-classifier")
    ci.set_alias("shape-classifier:v1", "production", expected="v0")
    console.print(
        "a mistaken promotion: shape-classifier:production -> "
        f"{ci.get('shape-classifier:production').ref} (the first epoch's checkpoint)"
    )
    before_rollback = ci.head()
    ci.set_alias("shape-classifier:v0", "production", expected="v1")
    console.print(
        f"rolled back: shape-classifier:production -> {ci.get('shape-classifier:production').ref}"
    )
    try:
        ci.set_alias("shape-classifier:v1", "production", expected="v1")
    except modeltrail.errors.ConcurrencyConflict as exc:
        console.print(f"a stale compare-and-set is refused: [italic]{exc}")

    _epoch_table(trainer)
    _latest_evaluation(trainer)

    console.rule("[bold]5. the auditor: alias histories")
    history = Table("alias", "position", "when", "actor", "from", "to", box=None)
    for owner, alias in ((MODEL, "best"), ("shape-classifier", "production")):
        for move in trainer.alias_history(owner, alias):
            history.add_row(
                f"{owner}:{alias}",
                str(move.position),
                f"{move.at:%H:%M:%S.%f}"[:-3],
                move.actor,
                _short(move.from_ref) or "-",
                _short(move.to_ref) or "(removed)",
            )
    console.print(history)

    console.rule("[bold]6. the audit trail (consecutive events of one kind folded together)")
    trail = Table("positions", "actor", "type", "stream", box=None)
    for first, last, count, event in _runs_of(trainer.audit(namespace="vision")):
        span = str(first) if count == 1 else f"{first}-{last}"
        kind = event.type if count == 1 else f"{event.type} x{count}"
        trail.add_row(span, event.actor, kind, event.stream)
    console.print(trail)

    console.rule(f"[bold]7. time travel: the registry as of position {before_rollback}")
    past = trainer.as_of(before_rollback)
    console.print(
        f"then: shape-classifier:production -> {past.get('shape-classifier:production').ref}"
    )
    console.print(
        f"now:  shape-classifier:production -> {trainer.get('shape-classifier:production').ref}"
    )
    rollback = next(iter(trainer.events(after=before_rollback)))
    console.print(f"(the rollback was recorded at {to_datetime(rollback.recorded_at):%H:%M:%S.%f})")

    console.rule("[bold]8. verify")
    report = trainer.verify()
    console.print(
        f"{'[green]ok' if report.ok else '[red]FAILED'}[/]: {report.events_checked} events, "
        "every hash chain intact, projections equal a fresh replay"
    )
    for problem in report.problems:
        console.print(f"[red]{problem}")
    console.print(f"best checkpoint: {best}")
    trainer.close()
    ci.close()
    if not report.ok:
        raise SystemExit(1)


# -- training ---------------------------------------------------------------------------


def _images(n: int, seed: int) -> tuple[Any, Any]:
    """Noisy 12x12 images of stripes: horizontal, vertical or diagonal, random phase."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (n,), generator=generator)
    phase = torch.randint(0, 4, (n, 1, 1), generator=generator)
    rows = torch.arange(12).view(1, 12, 1).expand(n, 12, 12)
    cols = torch.arange(12).view(1, 1, 12).expand(n, 12, 12)
    coordinate = torch.where(
        labels.view(n, 1, 1) == 0, rows, torch.where(labels.view(n, 1, 1) == 1, cols, rows + cols)
    )
    stripes = ((coordinate + phase) % 4 < 2).float() * 2 - 1
    noise = torch.randn(n, 12, 12, generator=generator) * 1.5
    return (stripes + noise).unsqueeze(1), labels


def _train(reg: Registry) -> str:
    import torch
    from torch import nn

    from modeltrail.producers.torch import ClassificationTracer, Evaluator, log_model

    torch.set_num_threads(min(2, torch.get_num_threads()))
    torch.manual_seed(CONFIG["seed"])
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, len(CLASSES)),
    )
    train_x, train_y = _images(960, seed=1)
    val_x, val_y = _images(240, seed=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=CONFIG["lr"], momentum=CONFIG["momentum"])
    tracer = ClassificationTracer(model, MODEL, RUN, reg, config=CONFIG)
    evaluator = Evaluator(MODEL, RUN, reg)
    console.print(
        f"model {MODEL} (architecture {tracer.arch_hash[:12]}), run {RUN} {CONFIG}: "
        f"{len(train_y)} training and {len(val_y)} validation images of {len(CLASSES)} classes"
    )
    best_acc, best_ref = -1.0, ""
    size = int(CONFIG["batch"])
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(train_y))
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            logits = tracer(train_x[idx], train_y[idx], input_ids=idx, n_epoch=epoch)
            loss = nn.functional.cross_entropy(logits, train_y[idx])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for start in range(0, len(val_y), size):
                idx = torch.arange(start, min(start + size, len(val_y)))
                tracer(val_x[idx], val_y[idx], input_ids=idx, dataset_type="val", n_epoch=epoch)
        train = evaluator.request_evaluation(epoch, "train")
        val = evaluator.request_evaluation(epoch, "val")
        tracer.run.log_metrics({"train_loss": train.loss or 0.0, "val_acc": val.accuracy}, epoch)
        version = log_model(
            reg, model, MODEL, run=tracer.run, epoch=epoch, metadata={"val_acc": val.accuracy}
        )
        assert version is not None
        moved = ""
        if val.accuracy > best_acc:
            best_acc, best_ref = val.accuracy, version.ref
            reg.set_alias(version.ref, "best")
            moved = "  [green]best ->[/] " + version.label
        console.print(
            f"epoch {epoch}: train loss {train.loss:.3f} acc {train.accuracy:.3f} | "
            f"val acc {val.accuracy:.3f} | checkpoint {version.label}{moved}"
        )
    tracer.close()
    tracer.run.finish()
    try:
        ClassificationTracer(model, MODEL, RUN, reg, config={**CONFIG, "lr": 0.5})
    except modeltrail.errors.RunConfigConflict as exc:
        console.print(f"reusing run {RUN!r} with another lr is refused: [italic]{exc}")
    return best_ref


def _epoch_table(reg: Registry) -> None:
    from modeltrail.producers.torch import Evaluator

    console.rule(f"[bold]3. epochs of {MODEL}/{RUN}, in recording order")
    table = Table("dataset", "n_epoch", "samples", "batches", "accuracy", "loss", box=None)
    for row in Evaluator(MODEL, RUN, reg).epochs():
        table.add_row(
            row.dataset_type or "",
            str(row.n_epoch),
            str(row.n_samples),
            str(row.batches),
            f"{row.accuracy:.3f}",
            "-" if row.loss is None else f"{row.loss:.3f}",
        )
    console.print(table)


def _latest_evaluation(reg: Registry) -> None:
    from modeltrail.producers.torch import Evaluator

    result = Evaluator(MODEL, RUN, reg).request_evaluation(n_epoch="latest", dataset_type="val")
    console.rule('[bold]4. request_evaluation(n_epoch="latest", dataset_type="val")')
    console.print(
        f"n_epoch={result.n_epoch}  samples={result.n_samples}  accuracy={result.accuracy:.3f}  "
        f"loss={result.loss:.3f}  mean confidence={result.confidence:.3f}"
    )
    table = Table("class", "samples", "correct", "recall", "precision", box=None)
    for cls, stats in sorted(result.per_class.items()):
        table.add_row(
            CLASSES[cls],
            str(stats.n_samples),
            str(stats.correct),
            "-" if stats.accuracy is None else f"{stats.accuracy:.3f}",
            "-" if stats.precision is None else f"{stats.precision:.3f}",
        )
    console.print(table)
    hardest = ", ".join(
        f"#{i} ({loss:.2f})"
        for i, loss in zip(result.hardest[:8], result.hardest_losses[:8], strict=True)
    )
    console.print(f"hardest validation images (input id, loss): {hardest}")


def _short(ref: str | None) -> str | None:
    """A reference without its namespace (every one in the demo is in ``vision``)."""
    return None if ref is None else ref.split("/", 1)[-1]


def _runs_of(events: list[Event]) -> Iterator[tuple[int, int, int, Event]]:
    """(first position, last position, count, first event) of each run of consecutive
    events with the same actor, type and stream."""
    start = 0
    for i in range(1, len(events) + 1):
        if i == len(events) or _kind(events[i]) != _kind(events[start]):
            yield events[start].position, events[i - 1].position, i - start, events[start]
            start = i


def _kind(event: Event) -> tuple[str, str, str]:
    return event.actor, event.type, event.stream
