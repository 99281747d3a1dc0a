"""The recording endpoint's cost: per-call latency and throughput of chat completions through
`rollout record` beside direct calls to the same vLLM, at concurrency 1 and 32, in one run.

Every call asks for exactly --tokens tokens (min_tokens = max_tokens) at temperature 0, so both
paths do the same work. Runs alternate direct, recorded, direct, recorded...; the mean of each
path's rounds counts. The recorder runs as its own process (as in production), writing its
JSONL to a file; its CPU time and peak memory are printed too.

    .venv/bin/python bench/bench_rollout.py [--base-url URL --model NAME] [--calls 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PROMPTS = ["What is 12 times 7?", "Name three prime numbers.", "Explain what a variable is.",
           "Write a haiku about rain.", "What is the capital of France?"]


async def load(url: str, model: str, calls: int, concurrency: int, tokens: int,
               stream: bool) -> tuple[float, list[float]]:
    """Wall seconds for ``calls`` calls at ``concurrency``, and each call's latency."""
    latencies: list[float] = []
    queue = list(range(calls))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def worker() -> None:
            while queue:
                i = queue.pop()
                body = {"model": model, "temperature": 0, "max_tokens": tokens,
                        "min_tokens": tokens, "stream": stream,
                        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
                started = time.monotonic()
                if stream:
                    async with client.stream("POST", url + "/chat/completions",
                                             json=body) as resp:
                        resp.raise_for_status()
                        async for _ in resp.aiter_lines():
                            pass
                else:
                    resp = await client.post(url + "/chat/completions", json=body)
                    resp.raise_for_status()
                latencies.append(time.monotonic() - started)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - started, latencies


def proc_stats(pid: int) -> tuple[float, float]:
    """CPU seconds and peak RSS (MiB) of a live process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
                .splitlines() if line.startswith("VmHWM")) / 1024
    return cpu, peak


@contextlib.contextmanager
def recorder(upstream: str, out: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = str(Path(sys.executable).parent / "rollout")
    with open(out, "wb") as sink:
        proc = subprocess.Popen([exe, "record", "--upstream", upstream, "--port", str(port)],
                                stdout=sink, stderr=subprocess.PIPE, text=True)
        try:
            proc.stderr.readline()  # "recording at ..." once it listens
            yield f"http://127.0.0.1:{port}/v1", proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="a running vLLM (default: serve the embedded model)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--calls", type=int, default=64, help="calls per round at 32")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        upstream = args.base_url
        if upstream is None:
            from flywheel.vllm import VLLMServer

            server = stack.enter_context(VLLMServer(args.model))
            upstream = server.base_url
            print(f"vLLM ({args.model}) ready in {server.startup_seconds:.0f} s")
        out = Path(tempfile.mkdtemp(prefix="bench-rollout-")) / "calls.jsonl"
        recorded_url, pid = stack.enter_context(recorder(upstream, out))
        asyncio.run(load(upstream, args.model, 4, 4, args.tokens, False))  # warm up
        asyncio.run(load(recorded_url, args.model, 4, 4, args.tokens, False))

        print(f"{args.tokens} tokens a call; mean of {args.rounds} alternating rounds")
        print(f"{'mode':>10}{'conc':>6}{'calls':>7}{'path':>10}{'calls/s':>10}"
              f"{'mean ms':>10}{'p95 ms':>9}{'overhead':>10}")
        cpu_before, _ = proc_stats(pid)
        recorded_calls = 0
        for stream, concurrency in ((False, 1), (False, 32), (True, 32)):
            calls = max(8, args.calls // 4) if concurrency == 1 else args.calls
            results: dict[str, list] = {"direct": [], "recorded": []}
            for _ in range(args.rounds):
                for path, url in (("direct", upstream), ("recorded", recorded_url)):
                    results[path].append(asyncio.run(
                        load(url, args.model, calls, concurrency, args.tokens, stream)))
            recorded_calls += calls * args.rounds
            base_rate = None
            for path, runs in results.items():
                rate = statistics.fmean(calls / wall for wall, _ in runs)
                lat = [x for _, lats in runs for x in lats]
                mean = statistics.fmean(lat) * 1000
                p95 = sorted(lat)[int(0.95 * (len(lat) - 1))] * 1000
                overhead = "" if base_rate is None else f"{base_rate / rate - 1:+.1%}"
                base_rate = base_rate or rate
                print(f"{'stream' if stream else 'plain':>10}{concurrency:6}{calls:7}{path:>10}"
                      f"{rate:10.2f}{mean:10.0f}{p95:9.0f}{overhead:>10}")
        cpu_after, peak = proc_stats(pid)
        lines = len(out.read_bytes().splitlines())
        per_call = (cpu_after - cpu_before) * 1000 / recorded_calls
        print(f"recorder: {lines} calls recorded, {per_call:.1f} ms CPU a call, "
              f"peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
