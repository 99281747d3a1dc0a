"""Start-up: each tool's `--help` against a bare `python -c pass`, best of several runs.

    .venv/bin/python bench/bench_help.py [--runs 5]

Every pipe pays a tool's start-up once per command, and `--help` is nothing else. Printed per
tool: the best wall time in seconds, the time over a bare interpreter's start, and the
interpreter's peak memory (RSS) on that run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from tracewheel.config import TOOLS, tool_package


def best_of(cmd: list[str], runs: int) -> tuple[float, float]:
    best, peak = float("inf"), 0.0
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak memory
        best = min(best, time.perf_counter() - started)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)}: exit status {proc.returncode}")
        peak = max(peak, usage.ru_maxrss / 1024)
    return best, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    bare, bare_peak = best_of([sys.executable, "-c", "pass"], args.runs)
    print(f"{'':16}{'seconds':>9}{'over bare':>11}{'peak MiB':>10}")
    print(f"{'python -c pass':16}{bare:9.3f}{'':>11}{bare_peak:10.0f}")
    for name in TOOLS:
        seconds, peak = best_of([sys.executable, "-m", tool_package(name), "--help"], args.runs)
        print(f"{name:16}{seconds:9.3f}{seconds - bare:10.3f}s{peak:10.0f}")


if __name__ == "__main__":
    main()
