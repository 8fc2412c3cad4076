"""A process killed in the middle of a batch append leaves a consistent home.

The worker prints ``committed N`` after each batch it wrote; the test waits for the first
such line, so a batch is known to have landed, then kills the worker at a random moment
of the batches that follow.
"""

from __future__ import annotations

import random
import re
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
n = 0
while True:
    n += 1
    reg._write(lambda b: [cmd.set_tags(b, "model", "team", "m", None, {"k": f"{n}-{i}"})
                          for i in range(BATCH)])
    print(f"committed {n}", flush=True)
""".replace("BATCH", str(BATCH))


def test_sigkill_mid_batch_leaves_log_and_projections_consistent(tmp_path: Path) -> None:
    home = tmp_path / "home"
    landed = 0
    rng = random.Random()
    for run in range(3):
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(home)], stdout=subprocess.PIPE, text=True
        )
        assert worker.stdout is not None
        first = worker.stdout.readline().strip()
        assert first == "committed 1", first
        delay = rng.uniform(0.0, 0.5)  # somewhere within the next batches
        time.sleep(delay)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        lines = [first, *worker.stdout.read().splitlines()]
        worker.stdout.close()
        # Batches known to be durable: the last complete "committed N" line.
        committed = max(
            int(match[1]) for line in lines if (match := re.fullmatch(r"committed (\d+)", line))
        )

        reg = mt.open(home, actor="auditor", namespace="team")
        tags = list(reg.events(types=["TagsSet"]))
        context = f"run {run}, killed {delay:.3f} s after the first commit"
        assert len(tags) % BATCH == 0, f"a batch landed in part ({context})"
        assert len(tags) >= landed + committed * BATCH, f"a committed batch is lost ({context})"
        landed = len(tags)
        report = reg.verify()
        assert report.ok, report.problems
        live = reg.export()
        reg.rebuild()
        assert reg.export() == live
        reg.set_alias("m:v0", f"after-crash-{run}")  # the home still takes writes
        reg.close()
