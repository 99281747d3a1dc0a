"""The recording endpoint's cost: latency and throughput of two-call conversations through
`rollout record`, with continuation on (the second call sent as token ids) and off (rendered
by vLLM), beside the same conversations sent to the same vLLM directly; plain and streaming, at
concurrency 1 and 16, in one run.

Each conversation is one session: a first call, then a call that continues it (its messages,
the first reply, a new user turn), with the project's tools in every request. Every call asks
for exactly --tokens tokens (min_tokens = max_tokens) at temperature 0, so every path does the
same work. Runs alternate direct, off, on, direct, ...; the mean of each path's rounds counts.
The recorders run as their own processes (as in production), writing JSONL to files; their CPU
time per call and peak memory are printed too.

    .venv/bin/python bench/bench_rollout.py [--base-url URL --model NAME] [--conversations 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from tracewheel_rollout.continuation import SAMPLE_TOOLS

PROMPTS = ["What is 12 times 7?", "Name three prime numbers.", "Explain what a variable is.",
           "Write a haiku about rain.", "What is the capital of France?"]


async def _ask(client: httpx.AsyncClient, url: str, body: dict) -> tuple[dict, float]:
    """One call: the assistant message it gave, and its latency."""
    started = time.monotonic()
    if not body["stream"]:
        resp = await client.post(url + "/chat/completions", json=body)
        resp.raise_for_status()
        message = resp.json()["choices"][0]["message"]
        return {"role": "assistant", "content": message.get("content"),
                **({"tool_calls": message["tool_calls"]} if message.get("tool_calls") else {})}, \
            time.monotonic() - started
    text = ""
    async with client.stream("POST", url + "/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            data = line.removeprefix("data:").strip()
            if data and data != "[DONE]":
                for choice in json.loads(data).get("choices") or []:
                    text += (choice.get("delta") or {}).get("content") or ""
    return {"role": "assistant", "content": text}, time.monotonic() - started


async def load(url: str, model: str, conversations: int, concurrency: int, tokens: int,
               stream: bool, sessions: bool) -> tuple[float, list[float]]:
    """Wall seconds for ``conversations`` two-call conversations at ``concurrency``, and the
    latency of each continuing call."""
    latencies: list[float] = []
    queue = list(range(conversations))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def worker() -> None:
            while queue:
                i = queue.pop()
                base = url.removesuffix("/v1") + f"/s/{uuid.uuid4().hex}/v1" if sessions else url
                common = {"model": model, "temperature": 0, "max_tokens": tokens,
                          "min_tokens": tokens, "stream": stream, "tools": SAMPLE_TOOLS}
                messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
                said, _ = await _ask(client, base, {**common, "messages": messages})
                messages += [said, {"role": "user", "content": "Say it in other words."}]
                _, latency = await _ask(client, base, {**common, "messages": messages})
                latencies.append(latency)

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
def recorder(upstream: str, out: Path, continuation: str):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = str(Path(sys.executable).parent / "rollout")
    with open(out, "wb") as sink:
        proc = subprocess.Popen([exe, "record", "--upstream", upstream, "--port", str(port),
                                 "--continuation", continuation],
                                stdout=sink, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stderr.readline()  # "recording at ..." once it listens
            if "recording at" not in line:
                raise SystemExit(f"rollout record did not start: {line}{proc.stderr.read()}")
            yield f"http://127.0.0.1:{port}/v1", proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="a running vLLM (default: serve the embedded model)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--conversations", type=int, default=32,
                        help="conversations per round at concurrency 16")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--weight-updates", action="store_true",
                        help="serve with weight updates on, as the loop's one vLLM is: the "
                             "recorders then read the served version around every call")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        upstream = args.base_url
        if upstream is None:
            from tracewheel.vllm import VLLMServer

            server = stack.enter_context(VLLMServer(args.model,
                                                    weight_updates=args.weight_updates))
            upstream = server.base_url
            print(f"vLLM ({args.model}) ready in {server.startup_seconds:.0f} s")
        # The recorders' calls files; removed after the recorders stop (the stack unwinds last in,
        # first out).
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-rollout-")))
        paths = {"direct": (upstream, None)}
        for mode in ("off", "on"):
            paths[f"cont-{mode}"] = stack.enter_context(
                recorder(upstream, folder / f"{mode}.jsonl", mode))
        for path, (url, _) in paths.items():  # warm up
            asyncio.run(load(url, args.model, 4, 4, args.tokens, False, path != "direct"))

        print(f"{args.tokens} tokens a call; two calls a conversation; latency of the "
              f"continuing call; mean of {args.rounds} alternating rounds")
        print(f"{'mode':>7}{'conc':>6}{'convs':>7}{'path':>10}{'convs/s':>10}"
              f"{'mean ms':>10}{'p95 ms':>9}{'overhead':>10}")
        cpu_before = {p: proc_stats(pid)[0] for p, (_, pid) in paths.items() if pid}
        recorded_calls = 0
        for stream, concurrency in ((False, 1), (True, 1), (False, 16), (True, 16)):
            n = max(8, args.conversations // 4) if concurrency == 1 else args.conversations
            results: dict[str, list] = {p: [] for p in paths}
            for _ in range(args.rounds):
                for path, (url, _) in paths.items():
                    results[path].append(asyncio.run(load(
                        url, args.model, n, concurrency, args.tokens, stream, path != "direct")))
            recorded_calls += 2 * n * args.rounds
            base_rate = None
            for path, runs in results.items():
                rate = statistics.fmean(n / wall for wall, _ in runs)
                lat = [x for _, lats in runs for x in lats]
                mean = statistics.fmean(lat) * 1000
                p95 = sorted(lat)[int(0.95 * (len(lat) - 1))] * 1000
                overhead = "" if base_rate is None else f"{base_rate / rate - 1:+.1%}"
                base_rate = base_rate or rate
                print(f"{'stream' if stream else 'plain':>7}{concurrency:6}{n:7}{path:>10}"
                      f"{rate:10.2f}{mean:10.0f}{p95:9.0f}{overhead:>10}")
        for path, (_, pid) in paths.items():
            if not pid:
                continue
            cpu_after, peak = proc_stats(pid)
            records = [json.loads(line) for line in
                       (folder / f"{path.removeprefix('cont-')}.jsonl").read_bytes().splitlines()]
            continued = sum(r.get("tokens") == "continued" for r in records)
            per_call = (cpu_after - cpu_before[path]) * 1000 / recorded_calls
            print(f"recorder {path}: {len(records)} calls recorded ({continued} continued), "
                  f"{per_call:.1f} ms CPU a call, peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
