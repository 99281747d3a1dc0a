"""GRPO beside SFT on the same samples, same run: speed, memory, and what bf16 does to the ratio.

Samples are real: the demo's production tasks run by the math agent on the embedded model
served by vLLM (float32 on a CPU, so its recorded logprobs are float32), merged by ctx-merge,
with the shaped reward. Or ``--samples FILE --model DIR`` (a run's ``iter-N/samples.jsonl`` and
the model that sampled them). Only the samples GRPO trains (groups with unequal rewards) are
kept, so every variant trains the same tokens. Each variant is the ``train`` command itself, in
its own process:

- sft:               SFT, --mixed-precision auto (bf16 autocast where the CPU has native bf16)
- grpo fp32:         GRPO in float32, the old log-probabilities the sampler's
- grpo bf16:         GRPO under bf16 autocast: the first step's ratio is then the trainer/sampler
                     gap itself, which the loss's importance-sampling truncation bounds
- grpo bf16 recompute: bf16, old log-probabilities recomputed by the trainer (one more forward
                     pass), the gap left to the truncated importance weight

Printed per variant and size: tokens/s after the first step and its ratio to SFT's, peak RSS,
and for GRPO the first step's ``kl_old`` (the trainer/sampler gap before any update: float32
should read ~0), the clip and truncation fractions over the run.

    .venv/bin/python bench/bench_grpo.py                      # ~12 min on a 2-core CPU
    .venv/bin/python bench/bench_grpo.py --samples runs/demo/iter-2/samples.jsonl \\
        --model runs/demo/iter-1/ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VARIANTS = {
    "sft": ["--algo", "sft"],
    "grpo fp32": ["--algo", "grpo", "--mixed-precision", "fp32"],
    "grpo bf16": ["--algo", "grpo", "--mixed-precision", "bf16"],
    "grpo bf16 recompute": ["--algo", "grpo", "--mixed-precision", "bf16",
                            "--recompute-logprobs"],
}


def make_samples(workdir: Path, model: str, tasks: int, samples: int) -> Path:
    """Real rollouts of the demo's tasks on ``model`` (vLLM), merged into samples."""
    exported = workdir / "tasks.jsonl"
    subprocess.run([BIN / "trace-export", ROOT / "examples/demo.sqlite", "--status", "ok",
                    "--agent", "MathAgent", "--references", ROOT / "examples/demo-references.jsonl",
                    "-o", exported], check=True)
    head = workdir / "head.jsonl"
    head.write_text("".join(exported.read_text().splitlines(True)[:tasks]))
    rollouts = workdir / "rollouts.jsonl"
    subprocess.run([BIN / "rollout", "-w", f"{ROOT}/examples/math_agent.py:run", "-n",
                    str(samples), "--reward", "boxed",
                    "--max-tokens", "192", "--seed", "0", "--serve", model, head, "-o",
                    rollouts], check=True)
    out = workdir / "samples.jsonl"
    subprocess.run([BIN / "ctx-merge", rollouts, "-o", out], check=True)
    return out


def trained_only(path: Path, limit: int | None) -> list[dict]:
    """The samples of groups with unequal rewards (what GRPO trains), whole groups, at most
    ``limit`` samples."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[str, set] = {}
    for r in records:
        groups.setdefault(r["group"], set()).add(r["reward"])
    kept, taken = [], set()
    for r in records:
        if len(groups[r["group"]]) < 2:
            continue
        if limit is not None and len(kept) >= limit and r["group"] not in taken:
            continue
        taken.add(r["group"])
        kept.append(r)
    return kept


def run_variant(args: list[str], model: str, samples: Path, workdir: Path,
                lr: float) -> tuple[list[dict], float]:
    """``train`` on the samples: its metrics lines, and its peak RSS in MiB."""
    cmd = [BIN / "train", "--model", model, "--lr", str(lr), "--seed", "0", "--out",
           workdir / "out", *args, samples]
    out_path, err_path = workdir / "metrics.jsonl", workdir / "train.log"
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        # wait4: this child's own peak RSS (getrusage of children keeps the largest ever).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"bench_grpo: {' '.join(map(str, cmd))} failed:\n"
                 f"{err_path.read_text()[-2000:]}")
    lines = out_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")], usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=Path, help="samples with rewards and logprobs")
    parser.add_argument("--model", default="smollm2-135m", help="the model that sampled them")
    parser.add_argument("--tasks", type=int, default=16, help="demo tasks to roll out")
    parser.add_argument("-n", type=int, default=4, help="rollouts per task")
    parser.add_argument("--sizes", default="12,24", help="samples trained per measurement")
    parser.add_argument("--lr", type=float, default=1e-5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        workdir = Path(tmp)
        source = args.samples or make_samples(workdir, args.model, args.tasks, args.n)
        print(f"samples: {source}; model: {args.model}")
        print(f"{'variant':<22} {'samples':>7} {'tokens':>7} {'tokens/s':>9} {'vs sft':>7} "
              f"{'peak MiB':>9} {'kl_old@1':>9} {'clip':>6} {'trunc':>6}")
        for size in [int(s) for s in args.sizes.split(",")]:
            picked = trained_only(source, size)
            data = workdir / f"samples-{size}.jsonl"
            data.write_text("".join(json.dumps(r) + "\n" for r in picked))
            sft_speed = None
            for name, extra in VARIANTS.items():
                started = time.perf_counter()
                metrics, peak = run_variant(extra, args.model, data, workdir, args.lr)
                timed = metrics[1:] or metrics
                speed = sum(m["tokens"] for m in timed) / sum(m["step_s"] for m in timed)
                sft_speed = sft_speed or speed
                grpo = metrics[0].get("kl_old") is not None
                kl1 = f"{metrics[0]['kl_old']:.2e}" if grpo else "-"
                clip = f"{statistics.fmean(m['clip_frac'] for m in metrics):.3f}" if grpo else "-"
                trunc = (f"{statistics.fmean(m['trunc_frac'] for m in metrics):.3f}"
                         if grpo else "-")
                print(f"{name:<22} {len(picked):>7} {sum(m['tokens'] for m in metrics):>7} "
                      f"{speed:>9.1f} {speed / sft_speed:>6.2f}x {peak:>9.0f} {kl1:>9} "
                      f"{clip:>6} {trunc:>6}   ({time.perf_counter() - started:.0f} s)",
                      flush=True)


if __name__ == "__main__":
    main()
