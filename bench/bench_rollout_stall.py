"""One hung rollout against the others: rollout's throughput on the rest of a run while one
rollout waits (as a rollout did for 600 s in a real `make flywheel`, its reply sitting unread).

Each run has 1 + N tasks: the first one's workflow sleeps HANG seconds, every other one makes
one call to a canned endpoint (the tests' CannedServer) and takes about WORK seconds. Printed:
wall time, and the other rollouts' throughput while the first hangs, in input order (the
default) against --unordered (no order to keep: the ideal), measured in the same run, and the
peak RSS of each rollout process.

    .venv/bin/python bench/bench_rollout_stall.py [--hang 20] [--tasks 64] [--jobs 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from canned import CannedServer, chat_completion  # noqa: E402  (the tests' fault injector)

WORKFLOW = '''
import asyncio
import openai

async def run(task, handle):
    if task["id"] == "t0":
        await asyncio.sleep({hang})
        return "late"
    client = openai.AsyncOpenAI(base_url=handle.base_url, api_key="EMPTY", max_retries=0)
    await client.chat.completions.create(model=handle.model_name,
                                         messages=[{{"role": "user", "content": task["query"]}}])
    await client.close()
    await asyncio.sleep({work})
    return "ok"
'''


def one(workflow: Path, tasks: Path, jobs: int, hang: float, unordered: bool
        ) -> tuple[float, int, float, int]:
    """Wall seconds; how many other rollouts called the model while the first one hung, and
    their rate (calls/s) then; peak RSS (KB) of the rollout process."""
    times: list[float] = []

    def answer(n: int):
        times.append(time.perf_counter())
        return 200, {}, chat_completion("4")

    with CannedServer(answer) as server:
        args = [str(Path(sys.executable).parent / "rollout"), "-w", f"{workflow}:run", "-j",
                str(jobs), "--base-url", server.base_url, "--model", "m", str(tasks), "-o",
                str(tasks.with_suffix(".out.jsonl"))]
        started = time.perf_counter()
        proc = subprocess.run(args + (["--unordered"] if unordered else []),
                              capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
    # The first rollout starts with the first batch, a moment before the first call.
    window_end = times[0] + hang
    during = [t for t in times if t <= window_end]
    rate = len(during) / (max(during) - times[0]) if len(during) > 1 else 0.0
    del proc
    return wall, len(during), rate, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hang", type=float, default=20.0, help="seconds the first one hangs")
    parser.add_argument("--work", type=float, default=0.5, help="seconds each other one takes")
    parser.add_argument("--tasks", type=int, default=64, help="other rollouts")
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stall-") as tmp:
        workflow = Path(tmp) / "stall.py"
        workflow.write_text(WORKFLOW.format(hang=args.hang, work=args.work))
        tasks = Path(tmp) / "tasks.jsonl"
        tasks.write_text("".join(json.dumps({"id": f"t{i}", "query": f"q{i}"}) + "\n"
                                 for i in range(args.tasks + 1)))
        print(f"{args.tasks} rollouts of ~{args.work:g} s behind one of {args.hang:g} s, "
              f"-j {args.jobs}")
        print(f"{'order':<10} {'wall s':>7} {'others run while it hung':>25} "
              f"{'their calls/s':>14} {'vs unordered':>13} {'peak RSS MB':>12}")
        rows = {mode: one(workflow, tasks, args.jobs, args.hang, mode == "unordered")
                for mode in ("unordered", "in order")}
        for mode, (wall, during, rate, peak) in rows.items():
            print(f"{mode:<10} {wall:>7.1f} {during:>17} of {args.tasks:<5} {rate:>14.1f} "
                  f"{rate / rows['unordered'][2]:>13.2f} {peak / 1024:>12.0f}")


if __name__ == "__main__":
    main()
