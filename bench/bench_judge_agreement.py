"""How often the embedded judge agrees with the fixtures' ground truth, with the seed's rubrics.

Exports each fixture Studio database with trace-export, judges every turn with trace-filter
(the embedded model served by vLLM on this machine, or --base-url/--model for another judge),
and compares each verdict with what the seed's rubrics call good in the manifest: an answer
that is correct (`is_correct`) and wraps it in \\boxed{} (`has_boxed`), from a turn without an
error. Prints, per database and in all, the confusion matrix, agreement, and the agreement of
the trivial judges "keep everything" and "--require-boxed" measured on the same turns.

    .venv/bin/python bench/bench_judge_agreement.py [--base-url URL --model NAME] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "studio"
SEED_RUBRICS = (
    "1. Check the answer and drop the task if it does not answer or answer is wrong.\n"
    "2. Consider a response is invalid if it does not wrap the final answer in \\boxed{}.\n")


def tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def truths(db: Path) -> list[bool]:
    """Per exported turn, in trace-export's order (by run id, then time): good or not."""
    manifest = json.loads(db.with_suffix(".manifest.json").read_text())
    return {run["run_id"]: [bool(t["is_correct"]) and t["has_boxed"] and not t["error"]
                            for t in run["turns"]] for run in manifest["runs"]}


def judged(db: Path, args: argparse.Namespace, env: dict) -> list[dict]:
    export = subprocess.run([tool("trace-export"), "-q", str(db)], capture_output=True,
                            check=True, env=env)
    cmd = [tool("trace-filter"), "-q", "--annotate", "--rubrics", SEED_RUBRICS,
           "--max-tokens", str(args.max_tokens), "--max-thread", str(args.max_thread)]
    if args.base_url:
        cmd += ["--base-url", args.base_url, "--model", args.model]
    out = subprocess.run(cmd, input=export.stdout, capture_output=True, env=env)
    if out.returncode != 0:
        sys.exit(f"trace-filter failed:\n{out.stderr.decode()[-2000:]}")
    return [json.loads(line) for line in out.stdout.splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-thread", type=int, default=8)
    args = parser.parse_args()
    env = {**os.environ, "FLYWHEEL_CACHE": tempfile.mkdtemp(prefix="bench-agreement-")}
    if args.base_url is None:
        env.pop("OPENAI_BASE_URL", None)

    total: Counter = Counter()
    print(f"{'database':40}{'turns':>6}{'agree':>7}{'keep-all':>9}{'boxed':>7}"
          f"{'TP':>4}{'FP':>4}{'TN':>4}{'FN':>4}{'err':>4}")
    for db in sorted(FIXTURES.glob("*.sqlite")):
        truth = truths(db)
        counts: Counter = Counter()
        for record in judged(db, args, env):
            good = truth[record["source"]["run_id"]].pop(0)
            verdict = record["judge"]["verdict"]
            boxed = "\\boxed{" in (record.get("answer") or "")
            counts["turns"] += 1
            counts["keep-all"] += good
            counts["boxed"] += boxed == good
            if verdict == "error":
                counts["err"] += 1
                continue
            kept = verdict == "keep"
            counts[("T" if kept == good else "F") + ("P" if kept else "N")] += 1
        counts["agree"] = counts["TP"] + counts["TN"]
        total.update(counts)
        row(db.stem, counts)
    row("all", total)


def row(name: str, c: Counter) -> None:
    n = c["turns"] or 1
    print(f"{name:40}{c['turns']:6}{c['agree'] / n:7.0%}{c['keep-all'] / n:9.0%}"
          f"{c['boxed'] / n:7.0%}{c['TP']:4}{c['FP']:4}{c['TN']:4}{c['FN']:4}{c['err']:4}")


if __name__ == "__main__":
    main()
