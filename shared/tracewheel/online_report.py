"""The online loop's report (``OUT/report.md``, ``OUT/online.png``): the live traffic's right
share over time with each promotion marked, the gate's verdict per candidate, the calls each
model answered, and the sessions in, trained on and without a reward.

The traffic's right share needs the truth, which a real deployment does not have: it is read
from ``OUT/users.jsonl`` (what ``examples/online_users.py`` writes: each session's ``right``,
never sent to the gateway) when there is one.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from .estimates import estimate, read

QUARTERS = 4


def difference(first: list[float], last: list[float]) -> tuple[float, float, float]:
    """last - first, two independent shares, with the normal 95% interval."""
    p1, p2 = sum(first) / len(first), sum(last) / len(last)
    se = math.sqrt(p1 * (1 - p1) / len(first) + p2 * (1 - p2) / len(last))
    d = p2 - p1
    return d, d - 1.96 * se, d + 1.96 * se


def _known(users: list[dict]) -> list[dict]:
    """The users' sessions that ended with a known outcome, in the order they ended."""
    return sorted((u for u in users if u.get("error") is None and u.get("right") is not None),
                  key=lambda u: u["end"])


def traffic_section(users: list[dict], events: list[dict], t0: float) -> list[str]:
    done = _known(users)
    if not done:
        return ["No user sessions with a known outcome (no users.jsonl)."]
    start, end = done[0]["start"], done[-1]["end"]
    span = max(end - start, 1e-9)
    parts: list[list[float]] = [[] for _ in range(QUARTERS)]
    for u in done:
        parts[min(int((u["end"] - start) / span * QUARTERS), QUARTERS - 1)].append(
            float(u["right"]))
    promotions = [e for e in events if e.get("event") == "candidate" and e.get("promoted")]
    lines = ["| quarter of the run (minutes) | sessions | right [95% CI] | promoted in it |",
             "|---|---|---|---|"]
    for q, values in enumerate(parts):
        lo, hi = start + span * q / QUARTERS, start + span * (q + 1) / QUARTERS
        est = estimate(values)
        marks = ", ".join(e["candidate"] for e in promotions if lo <= e["time"] < hi) or ""
        lines.append(f"| {q + 1} ({(lo - t0) / 60:.0f}-{(hi - t0) / 60:.0f}) | {len(values)} | "
                     f"{f'{est.mean:.3f} [{est.low:.3f}, {est.high:.3f}]' if est else '-'} | "
                     f"{marks} |")
    if parts[0] and parts[-1]:
        d, lo, hi = difference(parts[0], parts[-1])
        lines += ["", f"Last quarter against the first: {d:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                      f"(95%, two independent shares)."]
    errors = sum(u.get("error") is not None for u in users)
    lines += ["", f"Users: {len(users)} sessions, {errors} ended with an error."]
    return lines


def gate_section(events: list[dict]) -> list[str]:
    cands = [e for e in events if e.get("event") == "candidate"]
    failed = [e for e in events if e.get("event") == "candidate failed"]
    if not cands and not failed:
        return ["No candidate was trained."]
    lines = ["| candidate | trained on (sessions) | against | live | candidate | change "
             "[95% CI] | gate tasks | decision |", "|---|---|---|---|---|---|---|---|"]
    for e in cands:
        c = e["change"]
        bad = " (rewards inverted)" if e.get("inverted") else ""
        decision = "**promoted**" if e.get("promoted") else "kept aside"
        lines.append(f"| {e['candidate']}{bad} | {e['sessions']} | {e['live']} | "
                     f"{e['live_right']:.3f} | {e['candidate_right']:.3f} | "
                     f"{c['mean']:+.3f} [{c['low']:+.3f}, "
                     f"{c['high']:+.3f}] | {e['tasks']} | {decision} |")
    lines += [""] + [f"- {e['candidate']}: {e['reason']}" for e in cands]
    lines += [f"- {e['candidate']} failed: {e['reason']}" for e in failed]
    return lines


def sessions_section(sessions: list[dict], events: list[dict]) -> list[str]:
    by_model: Counter = Counter()
    failed = 0
    for s in sessions:
        for c in s.get("calls") or []:
            by_model[c.get("policy") or "?"] += 1
        failed += len(s.get("failed_calls") or [])
    rewarded = sum(s.get("reward") is not None for s in sessions)
    how = Counter((s.get("reward_info") or {}).get("method", "?") for s in sessions
                  if s.get("reward") is not None)
    trained = sum(e["sessions"] for e in events
                  if e.get("event") == "candidate" and e.get("promoted"))
    # a refused candidate's sessions go on to the next: the loop counts them once
    ends = [e for e in events if e.get("event") == "end"]
    distinct = (ends[-1].get("counts") or {}).get("trained on") if ends else None
    lines = [f"Sessions: {len(sessions)} in, {rewarded} with a reward "
             f"({', '.join(f'{k}: {v}' for k, v in sorted(how.items()))}), "
             f"{len(sessions) - rewarded} without (counted, not trained on); "
             f"{trained} in promoted candidates"
             + (f" ({distinct} learnt from by any candidate)." if distinct is not None
                else "."),
             "", f"Failed calls (of users' sessions; a run stopped mid-call fails the calls "
                 f"in flight): {failed}.", "",
             "| model | calls answered |", "|---|---|"]
    lines += [f"| {m} | {n} |" for m, n in sorted(by_model.items())]
    return lines


def plot_traffic(out: Path, users: list[dict], events: list[dict], t0: float) -> str | None:
    done = _known(users)
    if len(done) < 8:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    bins = max(4, min(16, len(done) // 25))
    size = math.ceil(len(done) / bins)
    xs, ys, lows, highs = [], [], [], []
    for i in range(0, len(done), size):
        chunk = done[i:i + size]
        est = estimate([float(u["right"]) for u in chunk])
        xs.append((sum(u["end"] for u in chunk) / len(chunk) - t0) / 60)
        ys.append(est.mean)
        lows.append(est.low)
        highs.append(est.high)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(xs, ys, marker="o", label="users' sessions right")
    ax.fill_between(xs, lows, highs, alpha=0.2)
    for e in events:
        if e.get("event") == "candidate":
            ax.axvline((e["time"] - t0) / 60, color="green" if e.get("promoted") else "red",
                       linestyle="--" if e.get("promoted") else ":")
            ax.text((e["time"] - t0) / 60, 0.02, e["candidate"], rotation=90, fontsize=7)
    ax.set_xlabel("minutes (green: promoted, red: kept aside)")
    ax.set_ylabel("right share")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(out / "online.png", dpi=100)
    plt.close(fig)
    return "online.png"


def write_report(out: Path) -> Path:
    events = read(out / "online.jsonl")
    users = read(out / "users.jsonl")
    sessions = read(out / "sessions.jsonl")
    t0 = next((e["time"] for e in events if e.get("event") == "start"),
              users[0]["start"] if users else 0.0)
    end = next((e for e in reversed(events) if e.get("event") == "end"), {})
    lines = ["# Online run", "",
             f"Live model at the end: {end.get('live', '?')}. Minutes: "
             f"{((events[-1]['time'] - t0) / 60 if events else 0):.0f}.", "",
             "## Users' traffic (right share, by the truth users never send)", "",
             *traffic_section(users, events, t0), ""]
    image = plot_traffic(out, users, events, t0)
    if image:
        lines += [f"![right share over time]({image})", ""]
    lines += ["## The gate (greedy, the gate set, paired by task)", "", *gate_section(events),
              "", "## Sessions and calls", "", *sessions_section(sessions, events), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
