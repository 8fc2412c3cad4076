"""A process killed in the middle of a batch append leaves a consistent home."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import modeltrail as mt

BATCH = 2000

WORKER = """
import sys
import modeltrail as mt
from modeltrail.core import commands as cmd

reg = mt.open(sys.argv[1], actor="w", namespace="team")
reg.log_version("m", {"w": b"0"})
print("ready", flush=True)
n = 0
while True:
    n += 1
    reg._write(lambda b: [cmd.set_tags(b, "model", "team", "m", None, {"k": f"{n}-{i}"})
                          for i in range(BATCH)])
""".replace("BATCH", str(BATCH))


def test_sigkill_mid_batch_leaves_log_and_projections_consistent(tmp_path: Path) -> None:
    home = tmp_path / "home"
    landed = 0
    for delay in (0.3, 0.7, 1.1):
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(home)], stdout=subprocess.PIPE, text=True
        )
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        time.sleep(delay)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)

        reg = mt.open(home, actor="auditor", namespace="team")
        tags = list(reg.events(types=["TagsSet"]))
        assert len(tags) % BATCH == 0, "a batch landed in part"
        assert len(tags) >= landed
        landed = len(tags)
        report = reg.verify()
        assert report.ok, report.problems
        live = reg.export()
        reg.rebuild()
        assert reg.export() == live
        reg.set_alias("m:v0", f"after-crash-{int(delay * 10)}")  # the home still takes writes
        reg.close()
    assert landed >= BATCH, "no batch committed before the kills: the test proved nothing"
