"""`modeltrail demo`: trains, traces, promotes and audits on a fresh embedded home."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.services import require_package

require_package("torch")

import modeltrail as mt  # noqa: E402
from modeltrail.demo import run_demo  # noqa: E402
from modeltrail.producers.torch import Evaluator  # noqa: E402


@pytest.mark.slow
def test_the_demo_trains_traces_promotes_and_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "demo"
    run_demo({"home": str(home)}, fresh=True)
    out = capsys.readouterr().out
    for part in ("epoch 3:", 'n_epoch="latest"', "alias histories", "audit trail", "ok: "):
        assert part in out
    reg = mt.open(home, actor="alice", namespace="vision")
    best = reg.get("shapes-cnn:best")
    assert reg.get("shape-classifier:production").ref == best.ref
    assert best.metadata["val_acc"] == max(
        v.metadata["val_acc"] for v in reg.versions("shapes-cnn")
    )
    latest = Evaluator("shapes-cnn", "baseline", reg).request_evaluation("latest", "val")
    assert (latest.n_epoch, latest.n_samples) == (3, 240)
    assert [m.to_ref for m in reg.alias_history("shape-classifier", "production")][-1] == best.ref
    assert reg.verify().ok
    reg.close()
