"""ctx-merge: merge throughput and training-token saving, beside the naive one-sample-per-call
conversion measured in the same run.

Synthetic agent timelines shaped like ReAct rollouts (a system prompt with tool schemas, then
turns of tool result or user message + completion ending with the end-of-turn token), linear
chains of 2, 5, 10 and 20 calls in turn, until --calls calls. Each measurement runs in its own
process (its peak memory is its own); rollouts are generated one at a time and only the
conversion itself is timed:

- generate: generating the rollouts, no conversion (the memory floor)
- naive: one sample per call (prompt + completion, mask 0/1, logprobs): the baseline
- merge: ``merge_rollout`` (one sample per linear chain)
- merge+splice: such timelines where one completion in ten is rendered back into the next
  prompt changed (a template mismatch), spliced

Then the training tokens each chain length costs, beside the optimum (one sample per chain: the
last call's prompt + completion), and the command line end to end (JSON in and out) on
--cli-calls calls, beside a floor that parses and writes the same lines.

    .venv/bin/python bench/bench_ctx_merge.py [--calls 100000] [--cli-calls 10000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHAINS = (2, 5, 10, 20)
END, NL, START, ASSISTANT, USER = 2, 198, 1, 520, 4093
VOCAB = range(1000, 49000)


def _tokens(rng: random.Random, lo: int, hi: int) -> list[int]:
    return rng.choices(VOCAB, k=rng.randint(lo, hi))


def synthetic_rollout(rng: random.Random, turns: int, rid: int,
                      mismatch_rate: float = 0.0) -> dict:
    """A linear timeline of ``turns`` calls; with ``mismatch_rate``, that share of the
    completions is rendered back into the next prompt with one token changed (the template
    rewrote it)."""
    system = {"role": "system", "content": "You are an agent."}
    messages = [system, {"role": "user", "content": "task"}]
    prompt = [START, *_tokens(rng, 250, 350), END, NL, START, USER, *_tokens(rng, 20, 60), END,
              NL, START, ASSISTANT]
    calls = []
    for k in range(turns):
        completion = [*_tokens(rng, 20, 80), END]
        output = {"role": "assistant", "content": f"step {k}"}
        calls.append({"agent": "agent", "messages": messages, "prompt_ids": prompt,
                      "completion_ids": completion,
                      "logprobs": [-rng.random() for _ in completion], "output": output,
                      "finish_reason": "stop"})
        rendered = list(completion)
        if mismatch_rate and rng.random() < mismatch_rate:
            rendered[0] += 1
        messages = [*messages, output, {"role": "tool", "content": f"result {k}"}]
        prompt = [*prompt, *rendered, NL, START, USER, *_tokens(rng, 20, 120), END, NL, START,
                  ASSISTANT]
    return {"id": f"task-{rid}/0", "task_id": f"task-{rid}", "group": f"task-{rid}",
            "sample": 0, "calls": calls, "reward": 1.0, "status": "ok"}


def rollouts(total_calls: int, seed: int = 0, mismatch_rate: float = 0.0):
    rng = random.Random(seed)
    made, rid = 0, 0
    while made < total_calls:
        turns = min(CHAINS[rid % len(CHAINS)], total_calls - made)
        yield synthetic_rollout(rng, turns, rid, mismatch_rate)
        made += turns
        rid += 1


def naive(rollout: dict) -> list[dict]:
    """The baseline: every call its own sample."""
    samples = []
    for i, call in enumerate(rollout["calls"]):
        p, c = call["prompt_ids"], call["completion_ids"]
        samples.append({"id": f"{rollout['id']}/{i}", "input_ids": p + c,
                        "loss_mask": [0] * len(p) + [1] * len(c),
                        "logprobs": [0.0] * len(p) + call["logprobs"]})
    return samples


def worker(mode: str, calls: int) -> dict:
    from tracewheel_ctx_merge.merge import merge_rollout
    from tracewheel_ctx_merge.sequences import MergeStats

    stats = MergeStats()
    convert = {
        "generate": None,
        "naive": naive,
        "merge": lambda r: merge_rollout(r, stats=stats),
        "merge+splice": lambda r: merge_rollout(r, on_mismatch="splice", stats=stats),
    }[mode]
    seconds = 0.0
    n_calls = tokens_in = tokens_out = samples = 0
    for rollout in rollouts(calls, mismatch_rate=0.1 if mode == "merge+splice" else 0.0):
        n_calls += len(rollout["calls"])
        tokens_in += sum(len(c["prompt_ids"]) + len(c["completion_ids"])
                         for c in rollout["calls"])
        if convert is None:
            continue
        started = time.perf_counter()
        out = convert(rollout)
        seconds += time.perf_counter() - started
        samples += len(out)
        tokens_out += sum(len(s["input_ids"]) for s in out)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "seconds": seconds, "calls": n_calls, "tokens_in": tokens_in,
            "tokens_out": tokens_out, "samples": samples, "peak_mib": peak_mib,
            "mismatches": sum(stats.mismatches.values()), "spliced": stats.spliced}


def run_worker(mode: str, calls: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", mode, "--calls", str(calls)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{mode} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def saving_table() -> None:
    from tracewheel_ctx_merge.merge import merge_rollout

    print(f"\n{'turns':>5}{'separate':>12}{'merged':>10}{'optimum':>10}{'saving':>9}"
          f"{'vs optimum':>12}{'samples':>9}")
    rng = random.Random(1)
    for turns in CHAINS:
        separate = merged = optimum = samples = 0
        for rid in range(200):
            rollout = synthetic_rollout(rng, turns, rid)
            last = rollout["calls"][-1]
            out = merge_rollout(rollout)
            separate += sum(len(s["input_ids"]) for s in naive(rollout))
            merged += sum(len(s["input_ids"]) for s in out)
            optimum += len(last["prompt_ids"]) + len(last["completion_ids"])
            samples += len(out)
        print(f"{turns:>5}{separate:>12}{merged:>10}{optimum:>10}{separate / merged:>8.2f}x"
              f"{merged / optimum:>11.2f}x{samples / 200:>9.2f}")
    print("(tokens over 200 chains each; saving = separate / merged; vs optimum = merged / "
          "optimum, 1.00x is optimal; samples per chain)")


FLOOR = """
import sys, orjson
with open(sys.argv[1], "rb") as src, open("/dev/null", "wb") as dst:
    for line in src:
        dst.write(orjson.dumps(orjson.loads(line)) + b"\\n")
"""


def cli_end_to_end(calls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ctx-merge-") as tmp:
        path = Path(tmp) / "rollouts.jsonl"
        with open(path, "w") as out:
            for rollout in rollouts(calls, seed=2):
                out.write(json.dumps(rollout) + "\n")
        size_mb = path.stat().st_size / 1e6
        exe = str(Path(sys.executable).parent / "ctx-merge")
        timings = {}
        for name, cmd in (("floor (orjson in+out)", [sys.executable, "-c", FLOOR, str(path)]),
                          ("ctx-merge", [exe, "-q", str(path), "-o", "/dev/null"])):
            best = float("inf")
            for _ in range(2):
                started = time.monotonic()
                subprocess.run(cmd, check=True)
                best = min(best, time.monotonic() - started)
            timings[name] = best
        print(f"\ncommand line end to end: {calls} calls, {size_mb:.0f} MB of rollouts")
        for name, seconds in timings.items():
            print(f"  {name:24}{seconds:8.2f} s{size_mb / seconds:8.1f} MB/s"
                  f"{calls / seconds:10.0f} calls/s")
        print(f"  ctx-merge / floor: {timings['ctx-merge'] / timings['floor (orjson in+out)']:.2f}x"
              f" the time (start-up of about 1 s included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--cli-calls", type=int, default=10_000,
                        help="calls for the end-to-end command line run (0: skip it)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.calls)))
        return

    results = [run_worker(mode, args.calls)
               for mode in ("generate", "naive", "merge", "merge+splice")]
    base = {r["mode"]: r for r in results}
    print(f"{args.calls} synthetic calls in linear chains of {', '.join(map(str, CHAINS))}; "
          f"{base['merge']['tokens_in'] / 1e6:.1f} M tokens in their calls")
    print(f"{'':14}{'seconds':>9}{'calls/s':>11}{'M tok/s in':>12}{'M tok out':>11}"
          f"{'samples':>9}{'peak MiB':>10}")
    for r in results:
        if r["mode"] == "generate":
            print(f"{'generate only':14}{'-':>9}{'-':>11}{'-':>12}{'-':>11}{'-':>9}"
                  f"{r['peak_mib']:>10.0f}")
            continue
        s = r["seconds"]
        print(f"{r['mode']:14}{s:>9.2f}{r['calls'] / s:>11.0f}{r['tokens_in'] / s / 1e6:>12.1f}"
              f"{r['tokens_out'] / 1e6:>11.1f}{r['samples']:>9}{r['peak_mib']:>10.0f}")
    spliced = base["merge+splice"]
    print(f"merge+splice: other timelines, one completion in ten rendered back changed: "
          f"{spliced['mismatches']} template mismatches, {spliced['spliced']} spliced")
    merge, plain = base["merge"], base["naive"]
    print(f"merge time / naive time: {merge['seconds'] / plain['seconds']:.2f}x; training tokens "
          f"naive / merged: {plain['tokens_out'] / merge['tokens_out']:.2f}x")
    saving_table()
    if args.cli_calls:
        cli_end_to_end(args.cli_calls)


if __name__ == "__main__":
    main()
