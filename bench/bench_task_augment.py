"""task-augment expand with the embedded model: how many of N asked-for tasks it produces, and
what it rejects (unparseable replies, duplicates, off-spec tasks), the requests it takes, wall
time and peak memory; then the same command again, answered from the cache.

The seed tasks are the demo's math tasks (examples/demo-references.jsonl). The bench starts the
embedded model with vLLM (the launcher, from .venv-vllm; start-up timed on its own) and runs
task-augment as the real command (a subprocess) against it, so the tool's peak memory is its
own; vLLM's peak is printed beside it.

    .venv/bin/python bench/bench_task_augment.py [--count 100] [--max-thread 8] [--seeds FILE]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tracewheel.models import EMBEDDED_MODEL
from tracewheel.vllm import VLLMServer

ROOT = Path(__file__).resolve().parent.parent


def run_tool(args: list[str], env: dict) -> tuple[float, float, list[dict], str]:
    """Seconds, peak RSS MiB, records written, the summary line."""
    exe = str(Path(sys.executable).parent / "task-augment")
    started = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", exe, *args], capture_output=True,
                          text=True, env=env)
    seconds = time.monotonic() - started
    lines = proc.stderr.strip().splitlines()
    if proc.returncode != 0:
        sys.exit(f"task-augment failed:\n{proc.stderr[-3000:]}")
    peak = int(lines[-1]) / 1024
    summary = next(s for s in reversed(lines) if s.startswith("task-augment: ") and " in " in s)
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return seconds, peak, records, summary


def count(summary: str, key: str) -> str:
    """``"12 (10 near generated, 2 exact input)"`` for ``key`` in the summary line."""
    m = re.search(rf"(\d+) {re.escape(key)}( \([^)]*\))?(?=,| in )", summary)
    return (m.group(1) + (m.group(2) or "")) if m else "0"


def vm_hwm_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(m.group(1)) / 1024 if m else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", "-n", type=int, default=100, help="tasks to ask for")
    parser.add_argument("--max-thread", type=int, default=8)
    parser.add_argument("--per-request", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--seeds", type=Path, default=ROOT / "examples" / "demo-references.jsonl")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-task-augment-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # no folder left behind
    env = {**os.environ, "TRACEWHEEL_CACHE": str(work / "cache")}
    seeds = sum(1 for line in args.seeds.read_text().splitlines() if line.strip())

    with VLLMServer(EMBEDDED_MODEL, log_file=work / "vllm.log") as server:
        print(f"vLLM ({EMBEDDED_MODEL}, CPU) started in {server.startup_seconds:.1f} s")
        cmd = ["expand", "-n", str(args.count), "--per-request", str(args.per_request),
               "--max-thread", str(args.max_thread), "--max-tokens", str(args.max_tokens),
               "--base-url", server.base_url, "--model", server.model_name, str(args.seeds)]
        seconds, peak, records, summary = run_tool(cmd, env)
        vllm_peak = vm_hwm_mib(server.process.pid) if server.process else None
        again_s, again_peak, again, again_summary = run_tool(cmd, env)

    print(f"\nexpand -n {args.count} from {seeds} seed tasks ({args.seeds.name}), "
          f"--per-request {args.per_request}, --max-thread {args.max_thread}, "
          f"--max-tokens {args.max_tokens}, 2 CPU cores")
    print(f"  summary: {summary}")
    print(f"  produced:               {len(records)} of {args.count}")
    print(f"  rejected unparseable:   {count(summary, 'unparseable')} requests "
          "(after parse retries)")
    print(f"  rejected duplicates:    {count(summary, 'duplicate')}")
    print(f"  rejected off-spec:      {count(summary, 'off-spec')}")
    print(f"  unused (beyond -n):     {count(summary, 'unused')}")
    print(f"  requests:               {count(summary, 'requests')}")
    print(f"  wall time:              {seconds:.1f} s ({len(records) / seconds:.2f} tasks/s)")
    print(f"  peak memory:            {peak:.0f} MiB task-augment"
          + (f", {vllm_peak:.0f} MiB vLLM server" if vllm_peak else ""))
    print(f"cached re-run: {again_s:.1f} s ({seconds / again_s:.0f}x faster), "
          f"{count(again_summary, 'requests')} requests, {count(again_summary, 'cached')} cached, "
          f"same output: {again == records}, peak {again_peak:.0f} MiB")
    sample = [r["query"] for r in records[:3]]
    print("first tasks:\n" + "\n".join(f"  - {q[:160]}" for q in sample))


if __name__ == "__main__":
    main()
