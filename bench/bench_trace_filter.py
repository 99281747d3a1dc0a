"""trace-filter's judge throughput against a local endpoint of fixed latency, at concurrency 1,
16 and 64, beside the ideal (concurrency / latency); then a cached re-run.

"of ideal" counts the whole command, start-up included; "w/o start-up" takes away the start-up
(a one-record run less one latency: imports, the client, the first connection). 500 ms is a
short LLM judge call; at 100 ms and 64 in flight, 640 requests a second, the client's own CPU
cost per request (and the canned server's, on the same two cores) starts to bound it.

The endpoint is the tests' CannedServer (tests/canned.py) answering every request with a
verdict after the latency. trace-filter runs as the real command (a subprocess), so start-up counts.

    .venv/bin/python bench/bench_trace_filter.py [--latency 0.5 0.1] [--seconds 8] [--cached 20000]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from canned import CannedServer, chat_completion  # noqa: E402  (the tests' fault injector)

VERDICT = json.dumps({"verdict": "keep", "reason": "fine"})


def write_tasks(path: Path, n: int, tag: str) -> None:
    with path.open("w") as out:
        for i in range(n):
            query = f"[{tag}] Task {i}: what is {i} + {i}?"
            out.write(json.dumps({"id": f"{tag}-{i}", "query": query, "answer": f"\\boxed{{{2*i}}}",
                                  "messages": [{"role": "user", "content": query}]}) + "\n")


def run_filter(args: list[str], tasks: Path, env: dict) -> tuple[float, float, int]:
    """Seconds, peak RSS MiB, records written."""
    exe = str(Path(sys.executable).parent / "trace-filter")
    started = time.monotonic()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", exe, "-q", *args, str(tasks)],
                          capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"trace-filter failed:\n{proc.stderr[-2000:]}")
    peak = int(proc.stderr.strip().splitlines()[-1]) / 1024
    return seconds, peak, len(proc.stdout.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, nargs="+", default=[0.5, 0.1],
                        help="endpoint latencies in seconds (each gets its own table)")
    parser.add_argument("--seconds", type=float, default=8.0, help="ideal duration of each run")
    parser.add_argument("--cached", type=int, default=20_000, help="records in the cached run")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-trace-filter-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # no folder left behind
    env = {**os.environ, "TRACEWHEEL_CACHE": str(work / "cache")}
    for latency in args.latency:
        print(f"\nendpoint latency {latency * 1000:.0f} ms")
        print(f"{'concurrency':>12}{'records':>9}{'seconds':>9}{'rec/s':>9}{'ideal':>9}"
              f"{'of ideal':>10}{'w/o start-up':>14}{'peak MiB':>10}")
        with CannedServer(lambda n: (200, {}, chat_completion(VERDICT)),
                          delay=lambda n, latency=latency: latency) as server:
            base = ["--base-url", server.base_url, "--model", "bench", "--retries", "0"]
            one = work / f"one-{latency}.jsonl"
            write_tasks(one, 1, f"one-{latency}")
            startup = run_filter(base, one, env)[0] - latency
            print(f"start-up (a one-record run less one latency): {startup:.2f} s")
            for concurrency in (1, 16, 64):
                ideal = concurrency / latency
                n = max(concurrency, int(ideal * args.seconds))
                tasks = work / f"c{concurrency}-{latency}.jsonl"
                write_tasks(tasks, n, f"c{concurrency}-{latency}")
                seconds, peak, written = run_filter(base + ["--max-thread", str(concurrency)],
                                                    tasks, env)
                assert written == n, (written, n)
                rate = n / seconds
                steady = n / max(seconds - startup, 1e-9)
                print(f"{concurrency:12}{n:9}{seconds:9.2f}{rate:9.0f}{ideal:9.0f}"
                      f"{rate / ideal:10.0%}{steady / ideal:14.0%}{peak:10.0f}")

    with CannedServer(lambda n: (200, {}, chat_completion(VERDICT))) as server:
        base = ["--base-url", server.base_url, "--model", "bench", "--retries", "0"]
        tasks = work / "cached.jsonl"
        write_tasks(tasks, args.cached, "cached")
        first, _, _ = run_filter(base + ["--max-thread", "64"], tasks, env)
        asked = len(server.requests)
        runs = [run_filter(base + ["--max-thread", "64"], tasks, env) for _ in range(3)]
        seconds, peak, written = min(runs)  # the best of three: the machine is shared
        assert len(server.requests) == asked  # nothing asked on a re-run
    print(f"\ncached re-run: {written} records in {seconds:.2f} s = {written / seconds:.0f} rec/s "
          f"end to end (first run, no latency: {written / first:.0f} rec/s, {asked} requests; "
          f"re-run: 0 requests), peak {peak:.0f} MiB")


if __name__ == "__main__":
    main()
