"""How long a whole ``modeltrail show m:production`` process takes, and its memory.

    python bench/cli_startup.py [--runs 20]

The command is run as a user runs it (a new Python process each time) against an
embedded home holding one model with 100 versions and a ``production`` alias.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, percentile, scratch

import modeltrail as mt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with scratch() as tmp:
        reg = mt.open(tmp, actor="bench", namespace="bench")
        for i in range(100):
            reg.log_version("m", {"model.bin": f"weights {i}".encode()})
        reg.set_alias("m:v42", "production")
        reg.close()
        env = {**os.environ, "MODELTRAIL_HOME": tmp, "MODELTRAIL_NAMESPACE": "bench"}
        command = [sys.executable, "-m", "modeltrail.cli", "show", "m:production"]
        baseline = [sys.executable, "-c", "pass"]
        seconds, bare = [], []
        for _ in range(args.runs):
            for target, argv in ((seconds, command), (bare, baseline)):
                start = time.perf_counter()
                subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
                target.append(time.perf_counter() - start)
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        f"modeltrail show m:production: median {statistics.median(seconds):.3f} s, "
        f"p90 {percentile(seconds, 90):.3f} s over {args.runs} processes "
        f"(bare `python -c pass`: {statistics.median(bare):.3f} s); "
        f"peak RSS {peak_kib / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
