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


def timings(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - start)
    return seconds


def report(label: str, seconds: list[float]) -> None:
    print(
        f"{label}: median {statistics.median(seconds):.3f} s, "
        f"p90 {percentile(seconds, 90):.3f} s over {len(seconds)} processes"
    )


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
        # As installed: with the bytecode cache (pip compiles at install; an editable
        # checkout writes it on its first run). Some sandboxes set PYTHONDONTWRITEBYTECODE,
        # and then every process compiles the package again (about 0.07 s more here).
        cached = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        command = [sys.executable, "-m", "modeltrail.cli", "show", "m:production"]
        timings(command, cached, 1)  # writes the bytecode cache
        report("modeltrail show m:production", timings(command, cached, args.runs))
        report(
            "  bare `python -c pass`", timings([sys.executable, "-c", "pass"], cached, args.runs)
        )
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"peak RSS of a process: {peak_kib / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
