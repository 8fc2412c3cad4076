"""``modeltrail demo``: a short tour of the registry on an embedded home, offline.

A trainer logs versions, CI promotes one through ``staging`` to ``production`` in a
registered model, someone rolls production back, and an auditor asks what happened:
the alias history, the audit trail, the registry as it was before the rollback, and a
verification of every hash chain.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import modeltrail
from modeltrail.core.events.envelope import to_datetime

console = Console()


def run_demo(options: dict[str, Any], *, fresh: bool) -> None:
    home = Path(options.get("home") or ".modeltrail/demo")
    if fresh and home.exists():
        shutil.rmtree(home)
    settings = {k: v for k, v in options.items() if k not in ("home", "actor", "namespace") and v}
    trainer = modeltrail.open(home, actor="alice", namespace="vision", **settings)
    ci = modeltrail.open(home, actor="ci-bot", namespace="vision", **settings)

    console.rule("[bold]1. a trainer logs versions")
    run = trainer.run("resnet18", "baseline-lr0.01", config={"lr": 0.01, "batch": 64})
    for epoch in range(3):
        run.log_metrics({"val_acc": 0.71 + 0.05 * epoch}, step=epoch)
        weights = f"weights of epoch {epoch}".encode() * 64
        version = run.log_version(
            {"model.safetensors": weights, "config.json": b'{"layers": 18}'},
            metadata={"val_acc": round(0.71 + 0.05 * epoch, 2)},
            epoch=epoch,
        )
        console.print(f"logged {version.ref}  val_acc={version.metadata['val_acc']}")
    again = run.log_version(
        {"model.safetensors": weights, "config.json": b'{"layers": 18}'}, epoch=2
    )
    console.print(f"same files again -> no new version, still {again.ref}")
    run.finish()

    console.rule("[bold]2. CI promotes through a registered model")
    ci.link("resnet18:v1", "classifier", aliases=["staging"])
    ci.link("resnet18:v2", "classifier", aliases=["staging"])
    ci.set_alias("classifier:staging", "production")
    console.print(f"classifier:production -> {ci.get('classifier:production').ref}")
    before_rollback = ci.head()
    ci.set_alias("classifier:v0", "production", expected="v1")
    console.print(f"rolled back: classifier:production -> {ci.get('classifier:production').ref}")
    try:
        ci.set_alias("classifier:v1", "production", expected="v1")
    except modeltrail.errors.ConcurrencyConflict as exc:
        console.print(f"a stale compare-and-set is refused: [italic]{exc}")

    console.rule("[bold]3. the auditor: alias history")
    history = Table("position", "when", "actor", "from", "to", box=None)
    for move in trainer.alias_history("classifier", "production"):
        history.add_row(
            str(move.position),
            f"{move.at:%H:%M:%S.%f}",
            move.actor,
            move.from_ref or "-",
            move.to_ref or "(removed)",
        )
    console.print(history)

    console.rule("[bold]4. the audit trail")
    trail = Table("position", "actor", "type", "stream", box=None)
    for event in trainer.audit(namespace="vision"):
        trail.add_row(str(event.position), event.actor, event.type, event.stream)
    console.print(trail)

    console.rule(f"[bold]5. time travel: the registry as of position {before_rollback}")
    past = trainer.as_of(before_rollback)
    console.print(f"then: classifier:production -> {past.get('classifier:production').ref}")
    console.print(f"now:  classifier:production -> {trainer.get('classifier:production').ref}")
    last = next(iter(trainer.events(after=before_rollback)))
    console.print(f"(the rollback was recorded at {to_datetime(last.recorded_at):%H:%M:%S.%f})")

    console.rule("[bold]6. verify")
    report = trainer.verify()
    console.print(
        f"{'[green]ok' if report.ok else '[red]FAILED'}[/]: {report.events_checked} events, "
        "every hash chain intact, projections equal a fresh replay"
    )
    for problem in report.problems:
        console.print(f"[red]{problem}")
    trainer.close()
    ci.close()
    if not report.ok:
        raise SystemExit(1)
