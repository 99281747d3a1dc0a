"""``python -m tracewheel.gate LIVE CANDIDATE``: whether a candidate model may go live.

Both files are rollout records of the same gate set of labelled tasks, one from the live model
and one from the candidate, sampled alike (the same seeds, greedy: what `rollout --temperature
0 --seed S` writes). The candidate's share of right answers is compared with the live model's,
paired by task; the decision follows the rule:

  not-worse   promote unless the candidate may be worse by more than the margin: the lower
              bound of the paired 95% interval of (candidate - live) is at least -margin
  better      promote only a gain the gate set can tell from noise: the lower bound above 0

Printed: one JSON line (``decision``, ``reason``, the two shares and the change with its
interval, the tasks compared). Exit status 0: promote; 3: refuse; 1: an error (a file missing,
no task in common, a rollout without a grade).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .cli import exit_status, tool_command
from .errors import TracewheelError
from .estimates import estimate, task_solved
from .jsonl import loads

RULES = ("not-worse", "better")
RULE = "not-worse"
MARGIN = 0.05  # of right share: a candidate within this of the live model may go live
REFUSED = 3


def decide(live: list[dict], candidate: list[dict], *, rule: str, margin: float) -> dict:
    """The gate's verdict on two rollout sets of the same tasks."""
    if rule not in RULES:
        raise TracewheelError(f"rule must be one of {', '.join(RULES)}")
    before, after = task_solved(live), task_solved(candidate)
    common = sorted(set(before) & set(after))
    if not common:
        raise TracewheelError("the live and the candidate rollouts have no graded task in "
                              "common (a gate set needs references, and the same tasks)")
    change = estimate([after[t] - before[t] for t in common])
    then = estimate([before[t] for t in common])
    now = estimate([after[t] for t in common])
    assert change is not None and then is not None and now is not None
    bound = 0.0 if rule == "better" else -margin
    promote = change.low > bound if rule == "better" else change.low >= bound
    interval = f"{change.mean:+.3f} [{change.low:+.3f}, {change.high:+.3f}]"
    if promote:
        reason = (f"right {now.mean:.3f} against the live model's {then.mean:.3f}: "
                  f"change {interval}, its lower bound "
                  f"{'above 0' if rule == 'better' else f'at least -{margin:g}'}")
    else:
        reason = (f"right {now.mean:.3f} against the live model's {then.mean:.3f}: "
                  f"change {interval}; the rule {rule} needs its lower bound "
                  f"{'above 0' if rule == 'better' else f'at least -{margin:g}'}")
    return {"decision": "promote" if promote else "refuse", "reason": reason, "rule": rule,
            "margin": margin if rule == "not-worse" else None, "tasks": len(common),
            "live": round(then.mean, 6), "candidate": round(now.mean, 6),
            "change": {"mean": round(change.mean, 6), "low": round(change.low, 6),
                       "high": round(change.high, 6)},
            "only_live": len(set(before) - set(after)),
            "only_candidate": len(set(after) - set(before))}


@tool_command("tracewheel.gate")
@click.argument("live", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("candidate", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--rule", type=click.Choice(RULES), default=RULE, show_default=True,
              help="not-worse: promote unless possibly worse by more than --margin; better: "
                   "only a gain whose paired 95% interval is above 0.")
@click.option("--margin", type=click.FloatRange(0, 1), default=MARGIN, show_default=True,
              help="With --rule not-worse: how much lower the candidate's right share may be "
                   "(at the interval's lower bound).")
def command(live: Path, candidate: Path, rule: str, margin: float) -> None:
    """Decide whether CANDIDATE may replace the LIVE model: both are rollout records of the
    same gate set (labelled tasks, the same seeds). Prints the verdict as one JSON line; exit
    status 0 to promote, 3 to refuse.

    \b
    Examples:
      python -m tracewheel.gate gate-live.jsonl gate-candidate.jsonl && promote
      python -m tracewheel.gate --rule better live.jsonl candidate.jsonl
    """
    verdict = decide(_rollouts(live), _rollouts(candidate), rule=rule, margin=margin)
    click.echo(json.dumps(verdict))
    if verdict["decision"] == "refuse":
        raise SystemExit(REFUSED)


def _rollouts(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = loads(line)
        except ValueError as err:
            raise TracewheelError(f"{path}:{number}: not JSON: {err}") from None
        if not isinstance(record, dict) or not isinstance(record.get("task_id"), str):
            raise TracewheelError(f"{path}:{number}: not a rollout record (no task_id)")
        records.append(record)
    if not records:
        raise TracewheelError(f"{path}: no rollout records")
    return records


def main(argv: list[str] | None = None) -> int:
    """The command's exit status (0 promote, 3 refuse, 1 an error, 2 a usage error)."""
    return exit_status(command, argv, "python -m tracewheel.gate")


if __name__ == "__main__":
    sys.exit(main())
