"""New weights into a running vLLM server against a restart with them, in the same run.

    .venv/bin/python bench/bench_weight_update.py [CHECKPOINT] [--rounds 3]
    .venv/bin/python bench/bench_weight_update.py BASE --adapter ADAPTER_DIR [--rounds 3]

CHECKPOINT (default: the embedded model) is loaded into a server serving the embedded model
(tracewheel.weight_updates.load_weights: pause, reload from disk, drop the prefix cache,
resume), and a new server is started with it instead. With --adapter, a LoRA adapter on BASE:
hot-loaded into a server of BASE (load_adapter, replacing the one of that name), against a new
server of BASE that then loads it. Printed: seconds of each, their ratio, and the first answer
after each (the same greedy prompt: they must agree).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import openai

from tracewheel.vllm import VLLMServer


def first_answer(server: VLLMServer, model: str) -> str:
    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
    resp = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is 17 times 19?"}],
        max_tokens=24, temperature=0.0)
    return resp.choices[0].message.content or ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default="smollm2-135m")
    parser.add_argument("--adapter", default=None, help="a LoRA adapter on CHECKPOINT")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rank = 0
    if args.adapter:
        config = json.loads((Path(args.adapter) / "adapter_config.json").read_text())
        rank = int(config["r"])

    def hot_load(server: VLLMServer, k: int) -> float:
        if args.adapter:
            return server.load_adapter("adapter", args.adapter)
        return server.load_weights(args.checkpoint, version=f"v{k}")

    def restarted() -> VLLMServer:
        if args.adapter:
            server = VLLMServer(args.checkpoint, served_model_name="policy", lora_rank=rank)
            server.start()
            server.load_adapter("adapter", args.adapter)
            return server
        return VLLMServer(args.checkpoint, served_model_name="policy").start()

    asked = "adapter" if args.adapter else "policy"
    loads, answers = [], {}
    first = args.checkpoint if args.adapter else "smollm2-135m"
    with VLLMServer(first, served_model_name="policy", weight_updates=not args.adapter,
                    lora_rank=rank) as server:
        for k in range(args.rounds):
            loads.append(hot_load(server, k))
        answers["hot-load"] = first_answer(server, asked)
    starts = []
    for _ in range(args.rounds):
        started = time.monotonic()
        server = restarted()
        ready = time.monotonic() - started
        try:
            answers["restart"] = first_answer(server, asked)
        finally:
            stopping = time.monotonic()
            server.stop()
        starts.append(ready + time.monotonic() - stopping)  # a restart is a start and a stop
    load, start = statistics.median(loads), statistics.median(starts)
    what = f"adapter {args.adapter} on {args.checkpoint}" if args.adapter else args.checkpoint
    print(f"bench_weight_update: {what}, {args.rounds} rounds, median seconds")
    hot = "hot-load (load_adapter)" if args.adapter else "hot-load (pause, reload, resume)"
    print(f"{hot:36}{load:8.2f}")
    print(f"{'restart (stop, start, ready)':36}{start:8.2f}{start / load:8.0f}x slower")
    for how, text in answers.items():
        print(f"{how:10} first answer: {text[:60]!r}")
    if answers["hot-load"] != answers["restart"]:
        print("warning: the two servers answer differently")


if __name__ == "__main__":
    main()
