"""Two `rollout --serve` runs at once on one machine, each with its own vLLM: the wall time of
each against one run alone, with the launcher's core claims (tracewheel.cpu_cores) and with
vLLM's own binding for both (VLLM_CPU_OMP_THREADS_BIND=auto: every worker on core 0), in the
same run.

    .venv/bin/python bench/bench_two_servers.py [--tasks 40] [--jobs 8]

Each run starts its server (about a minute on a CPU), so the times include start-up, as a
user's `rollout --serve` does. Figures: seconds per run, each run's speed as a share of the
alone run's (1/2 is what two runs sharing the machine fairly would get), and the peak RSS of
the largest process the runs started.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def start(tasks: Path, out: Path, jobs: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "rollout"), "--serve", "smollm2-135m", "-w", "examples/math_agent.py:run",
         "--reward", "boxed", "-j", str(jobs), "--temperature", "0", "-q", str(tasks),
         "-o", str(out)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def runs(n: int, tasks: Path, folder: Path, jobs: int, env: dict[str, str]) -> list[float]:
    """``n`` runs started together; each one's wall seconds."""
    began = time.monotonic()
    procs = [start(tasks, folder / f"out-{n}-{k}.jsonl", jobs, env) for k in range(n)]
    took = []
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"rollout failed ({proc.returncode}):\n{err.decode()[-2000:]}")
        took.append(time.monotonic() - began)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args()
    lines = (ROOT / "examples" / "math-eval.jsonl").read_text().splitlines()[:args.tasks]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tasks = folder / "tasks.jsonl"
        tasks.write_text("\n".join(lines) + "\n")
        claims = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_OMP_THREADS_BIND"}
        alone = runs(1, tasks, folder, args.jobs, claims)[0]
        print(f"one run alone: {alone:.1f} s ({args.tasks} tasks, -j {args.jobs})")
        for label, env in (("claimed cores", claims),
                           ("vLLM's auto binding", {**claims,
                                                    "VLLM_CPU_OMP_THREADS_BIND": "auto"})):
            both = runs(2, tasks, folder, args.jobs, env)
            shares = ", ".join(f"{t:.1f} s ({alone / t:.2f} of alone)" for t in both)
            print(f"two at once, {label}: {shares}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS of one process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
