"""vLLM on this machine: start-up time, decode speed and peak memory of the launcher's default
(on a CPU: --enforce-eager) against vLLM's own default (torch.compile), in the same run.

    .venv/bin/python bench/bench_vllm_startup.py [--tokens 128] [--requests 4]
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time

import openai
import psutil

from tracewheel.vllm import VLLMServer


def group_rss_mib(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total / 2**20


class PeakRSS:
    """The peak RSS of a server's process tree, sampled every 0.5 s while inside the block."""

    def __init__(self, server: VLLMServer):
        self.server = server
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            if self.server.process is not None:
                self.peak = max(self.peak, group_rss_mib(self.server.process.pid))
            time.sleep(0.5)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(eager: bool, tokens: int, requests: int) -> dict:
    server = VLLMServer("smollm2-135m", eager=eager)
    with PeakRSS(server) as rss, server:
        client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY")
        generated, started = 0, time.monotonic()
        for i in range(requests):
            resp = client.chat.completions.create(
                model="smollm2-135m", max_tokens=tokens, temperature=1.0, seed=i,
                messages=[{"role": "user", "content": "Tell me a long story about a ship."}],
                extra_body={"min_tokens": tokens})
            generated += resp.usage.completion_tokens
        seconds = time.monotonic() - started
    return {"startup_s": server.startup_seconds, "tokens_per_s": generated / seconds,
            "peak_rss_mib": rss.peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=4)
    args = parser.parse_args()
    base = measure(eager=False, tokens=args.tokens, requests=args.requests)
    ours = measure(eager=True, tokens=args.tokens, requests=args.requests)
    print(f"{'':28}{'start-up s':>12}{'decode tok/s':>14}{'peak RSS MiB':>14}")
    for name, r in (("vLLM default (compiled)", base), ("launcher default (eager)", ours)):
        print(f"{name:28}{r['startup_s']:12.1f}{r['tokens_per_s']:14.1f}{r['peak_rss_mib']:14.0f}")
    print(f"ratio eager/compiled: start-up {ours['startup_s'] / base['startup_s']:.2f}x, "
          f"decode {ours['tokens_per_s'] / base['tokens_per_s']:.2f}x, "
          f"peak RSS {ours['peak_rss_mib'] / base['peak_rss_mib']:.2f}x")


if __name__ == "__main__":
    main()
