"""vLLM's KV-cache block size on a CPU, by real agent rollouts: the launcher's 32 tokens against
vLLM's own CPU default of 128, the same tasks, model and seeds, in the same run.

An agent's calls repeat what it sent before (the system prompt and tools, then the whole
conversation so far), and vLLM's prefix cache only keeps whole blocks: what is left over is
prefilled again, and on a CPU prefill is most of the work.

    .venv/bin/python bench/bench_vllm_cpu.py [--model runs/demo/iter-1/ckpt] [--tasks 96]

Use a model that calls the tool (a trained checkpoint): the embedded model answers in one call,
so its rollouts reuse little. Printed per block size: wall seconds of the rollouts, rollouts per
second and its ratio to 128, the prefix cache's hit rate, the mean reward (the same seeds give
the same answers, so it should not move), and the server's peak memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench_vllm_startup import PeakRSS  # bench/ is on the path when a bench runs as a script

from tracewheel.vllm import VLLMServer

ROOT = Path(__file__).resolve().parents[1]


def prefix_hit_rate(url: str) -> float | None:
    """hits / queried tokens of the prefix cache, from the server's Prometheus metrics."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    found = {}
    for line in text.splitlines():
        for name in ("prefix_cache_hits", "prefix_cache_queries"):
            if line.startswith(f"vllm:{name}_total"):
                found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    queries = found.get("prefix_cache_queries")
    return found.get("prefix_cache_hits", 0.0) / queries if queries else None


def measure(args: argparse.Namespace, block: int, tasks: Path, workdir: Path) -> dict:
    server = VLLMServer(args.model, extra_args=["--block-size", str(block)],
                        log_file=workdir / f"vllm-{block}.log")
    out = workdir / f"rollouts-{block}.jsonl"
    with PeakRSS(server) as rss, server:
        started = time.monotonic()
        subprocess.run([str(Path(sys.executable).parent / "rollout"), "-w", args.workflow,
                        "-n", "1", "-j", str(args.jobs), "--reward", "boxed",
                        "--max-tokens", str(args.max_tokens), "--seed", "0",
                        "--base-url", server.base_url, "--model", server.model_name,
                        str(tasks), "-o", str(out)],
                       check=True, stderr=subprocess.DEVNULL)
        seconds = time.monotonic() - started
        hits = prefix_hit_rate(server.url)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    rewards = [r["reward"] for r in rows if r.get("reward") is not None]
    return {"seconds": seconds, "rollouts": len(rows), "hit_rate": hits, "peak_mib": rss.peak,
            "reward": sum(rewards) / len(rewards) if rewards else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a model name or directory")
    parser.add_argument("--tasks", type=int, default=96, help="tasks of the evaluation set")
    parser.add_argument("--eval", default=str(ROOT / "examples" / "math-eval.jsonl"))
    parser.add_argument("--workflow", default=str(ROOT / "examples" / "math_agent.py") + ":run")
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--blocks", default="128,32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-vllm-cpu-") as tmp:
        workdir = Path(tmp)
        tasks = workdir / "tasks.jsonl"
        lines = Path(args.eval).read_text().splitlines()[:args.tasks]
        tasks.write_text("".join(line + "\n" for line in lines))
        print(f"bench_vllm_cpu: {len(lines)} tasks of {args.eval}, model {args.model}, "
              f"-j {args.jobs}, --max-tokens {args.max_tokens}", flush=True)
        results = {int(b): measure(args, int(b), tasks, workdir) for b in args.blocks.split(",")}
    base = results.get(128)
    print(f"{'block':>6}{'seconds':>9}{'rollouts/s':>12}{'vs 128':>8}{'hit rate':>10}"
          f"{'reward':>8}{'peak MiB':>10}")
    for block, r in results.items():
        rate = r["rollouts"] / r["seconds"]
        ratio = f"{base['seconds'] / r['seconds']:7.2f}x" if base else f"{'-':>8}"
        hits = f"{100 * r['hit_rate']:9.1f}%" if r["hit_rate"] is not None else f"{'-':>10}"
        print(f"{block:6d}{r['seconds']:9.1f}{rate:12.2f}{ratio}{hits}{r['reward']:8.3f}"
              f"{r['peak_mib']:10.0f}")


if __name__ == "__main__":
    main()
