"""New weights into a running vLLM server against a restart with them, in the same run.

    .venv/bin/python bench/bench_weight_update.py [CHECKPOINT] [--rounds 3]

CHECKPOINT (default: the embedded model) is loaded into a server serving the embedded model
(tracewheel.vllm.load_weights: pause, reload from disk, drop the prefix cache, resume), and a
new server is started with it instead. Printed: seconds of each, their ratio, and the first
answer after each (the same greedy prompt: they must agree).
"""

from __future__ import annotations

import argparse
import statistics
import time

import openai

from tracewheel.vllm import VLLMServer


def first_answer(server: VLLMServer) -> str:
    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
    resp = client.chat.completions.create(
        model=server.model_name, messages=[{"role": "user", "content": "What is 17 times 19?"}],
        max_tokens=24, temperature=0.0)
    return resp.choices[0].message.content or ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    loads, answers = [], {}
    with VLLMServer("smollm2-135m", served_model_name="policy", weight_updates=True) as server:
        for k in range(args.rounds):
            loads.append(server.load_weights(args.checkpoint, version=f"v{k}"))
        answers["hot-load"] = first_answer(server)
    starts = []
    for _ in range(args.rounds):
        server = VLLMServer(args.checkpoint, served_model_name="policy")
        started = time.monotonic()
        server.start()
        ready = time.monotonic() - started
        try:
            answers["restart"] = first_answer(server)
        finally:
            stopping = time.monotonic()
            server.stop()
        starts.append(ready + time.monotonic() - stopping)  # a restart is a start and a stop
    load, start = statistics.median(loads), statistics.median(starts)
    print(f"bench_weight_update: {args.checkpoint}, {args.rounds} rounds, median seconds")
    print(f"{'hot-load (pause, reload, resume)':36}{load:8.1f}")
    print(f"{'restart (stop, start, ready)':36}{start:8.1f}{start / load:8.1f}x slower")
    for how, text in answers.items():
        print(f"{how:10} first answer: {text[:60]!r}")
    if answers["hot-load"] != answers["restart"]:
        print("warning: the two servers answer differently")


if __name__ == "__main__":
    main()
