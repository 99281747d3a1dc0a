"""How well each trace-filter stack keeps what the fixtures' ground truth calls good: precision
and recall of *keep*, in one table.

Ground truth per turn, from each fixture database's manifest: a turn is good when its answer is
correct (`is_correct`, graded with the user's feedback in view), wraps it in \\boxed{}
(`has_boxed`) and the turn had no error: what the seed's rubrics ask for. References come from
the same manifests (`expected_answer`, matched by scripts/make_demo_references.py).

The stacks, all scored on the same turns:
  keep-all              trace-filter --no-judge
  rules                 --no-judge --drop-errors --require-boxed
  rules + reference     the rules and --check-reference --undecided drop
  judge                 the judge with the seed's rubrics, the tasks without their references
  judge + reference     the same judge, the tasks with their references
  auto rubrics          the judge with rubrics `learn-rubrics` learned from --examples labelled
                        turns, with references
The labelled examples are held back from every stack's figures. With no --base-url the judge is
the embedded model, served once by vLLM on this machine for the whole run.

    .venv/bin/python bench/bench_judge_agreement.py [--base-url URL --model NAME]
        [--examples 12] [--candidates 3] [--rounds 2] [--max-tokens 128] [--seed 0]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.util
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "studio"
SEED_RUBRICS = (ROOT / "examples" / "rubrics.txt").read_text()
RULES = ["--drop-errors", "--require-boxed"]


def tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def graded_turns(db: Path) -> list[tuple[dict, dict]]:
    spec = importlib.util.spec_from_file_location(
        "make_demo_references", ROOT / "scripts" / "make_demo_references.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.graded_turns(db)


def good(turn: dict) -> bool:
    return bool(turn["is_correct"]) and turn["has_boxed"] and not turn["error"]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def run(cmd: list[str], env: dict, stdin: Path | None = None) -> str:
    with open(stdin, "rb") if stdin else contextlib.nullcontext() as stream:
        out = subprocess.run(cmd, stdin=stream, capture_output=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd[:2])} failed:\n{out.stderr.decode()[-3000:]}")
    return out.stdout.decode()


def score(verdicts: list[dict], truth: list[bool]) -> dict:
    c = {"tp": 0, "fp": 0, "tn": 0, "fn": 0, "err": 0}
    for verdict, is_good in zip(verdicts, truth, strict=True):
        if verdict == "error":
            c["err"] += 1
            continue
        kept = verdict == "keep"
        c[("t" if kept == is_good else "f") + ("p" if kept else "n")] += 1
    n = len(truth)
    c["precision"] = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else float("nan")
    c["recall"] = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else float("nan")
    c["agree"] = (c["tp"] + c["tn"]) / n
    c["kept"] = c["tp"] + c["fp"]
    return c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--examples", type=int, default=12,
                        help="labelled turns learn-rubrics learns from (held back)")
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-thread", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-agreement-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # no folder left behind
    env = {**os.environ, "TRACEWHEEL_CACHE": str(tmp / "cache")}
    # Converted models live in the user's cache; the verdicts of this run in a fresh one.
    from tracewheel.models import cache_dir

    (tmp / "cache").mkdir()
    if (cache_dir() / "models").exists():
        os.symlink(cache_dir() / "models", tmp / "cache" / "models")

    plain, graded, truth = [], [], []
    for db in sorted(FIXTURES.glob("*.sqlite")):
        pairs = graded_turns(db)
        refs = write_jsonl(tmp / f"{db.stem}.refs.jsonl", [
            {"id": r["id"], "reference": t["expected_answer"]} for r, t in pairs
            if t["expected_answer"] is not None])
        with_refs = run([tool("trace-export"), "-q", str(db), "--references", str(refs)], env)
        by_id = {r["id"]: r for r in map(json.loads, with_refs.splitlines())}
        plain += [r for r, _ in pairs]
        graded += [by_id[r["id"]] for r, _ in pairs]  # in the manifest's order, as truth
        truth += [good(t) for _, t in pairs]
    held = set(random.Random(args.seed).sample(range(len(truth)), args.examples))
    examples = [{**graded[i], "label": "keep" if truth[i] else "drop"} for i in sorted(held)
                if graded[i].get("answer")]
    rest = [i for i in range(len(truth)) if i not in held]
    plain_file = write_jsonl(tmp / "plain.jsonl", [plain[i] for i in rest])
    graded_file = write_jsonl(tmp / "graded.jsonl", [graded[i] for i in rest])
    truth_rest = [truth[i] for i in rest]

    with contextlib.ExitStack() as stack:
        base_url, model = args.base_url, args.model
        if base_url is None:
            from tracewheel.vllm import VLLMServer

            server = stack.enter_context(VLLMServer(model, log_file=tmp / "vllm.log"))
            base_url = server.base_url
        endpoint = ["--base-url", base_url, "--model", model, "--max-tokens",
                    str(args.max_tokens), "--max-thread", str(args.max_thread)]
        rubrics_file = tmp / "learned-rubrics.txt"
        stacks = {
            "keep-all": (["--no-judge"], plain_file),
            "rules": (["--no-judge", *RULES], plain_file),
            "rules + reference": (["--no-judge", *RULES, "--check-reference", "--undecided",
                                   "drop"], graded_file),
            "judge": ([*endpoint, "--rubrics", SEED_RUBRICS], plain_file),
            "judge + reference": ([*endpoint, "--rubrics", SEED_RUBRICS], graded_file),
            "auto rubrics": ([*endpoint, "--rubrics", str(rubrics_file)], graded_file),
        }
        rows = {}
        for name, (options, source) in stacks.items():
            started = time.monotonic()
            if name == "auto rubrics":
                run([tool("trace-filter"), "learn-rubrics", *endpoint,
                     "--candidates", str(args.candidates), "--rounds", str(args.rounds),
                     "--seed", str(args.seed), "-o", str(rubrics_file), "--scores",
                     str(tmp / "scores.jsonl")], env,
                    write_jsonl(tmp / "examples.jsonl", examples))
            out = run([tool("trace-filter"), "-q", "--annotate", *options], env, source)
            verdicts = [json.loads(line)["judge"]["verdict"] for line in out.splitlines()]
            rows[name] = {**score(verdicts, truth_rest), "s": time.monotonic() - started}

    good_n = sum(truth_rest)
    print(f"{len(truth_rest)} turns of {len(list(FIXTURES.glob('*.sqlite')))} fixture databases "
          f"({good_n} good by the manifests, {len(truth_rest) - good_n} not); judge {model}; "
          f"{len(examples)} labelled examples held back for auto rubrics")
    print(f"{'stack':20}{'kept':>6}{'precision':>11}{'recall':>8}{'agree':>7}"
          f"{'TP':>5}{'FP':>5}{'TN':>5}{'FN':>5}{'err':>5}{'s':>8}")
    for name, c in rows.items():
        print(f"{name:20}{c['kept']:6}{c['precision']:11.3f}{c['recall']:8.3f}{c['agree']:7.3f}"
              f"{c['tp']:5}{c['fp']:5}{c['tn']:5}{c['fn']:5}{c['err']:5}{c['s']:8.1f}")
    learned = [json.loads(line) for line in (tmp / "scores.jsonl").read_text().splitlines()]
    chosen = next(c for c in learned if c["chosen"])
    print(f"auto rubrics: {len(learned)} candidates; chosen {chosen['origin']}, "
          f"{chosen['agree']}/{chosen['examples']} of its examples; its text:")
    print("  " + rubrics_file.read_text().strip().replace("\n", "\n  "))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS of a child process (trace-filter, or vLLM): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
