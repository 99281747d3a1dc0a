"""trace-export as plain functions over ExportConfig: what the command runs, and what tests
call."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from tracewheel.cli import Summary, progress
from tracewheel.errors import TracewheelError
from tracewheel.jsonl import atomic_path, open_output

from .config import ExportConfig
from .references import References
from .studio import detect_schema, iter_runs, open_readonly

if TYPE_CHECKING:
    from .turns import Run, Turn

def parse_time(value: str) -> datetime:
    """An ISO date or time; without a zone, UTC. ValueError where it is neither."""
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO date or time "
                         f"(e.g. 2026-11-22 or 2026-11-22T03:50:00Z)") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


class State:
    """What earlier runs exported (``--state FILE``): record ids, so nothing is emitted twice."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.done: set[str] = set()
        if self.path and self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self.done = set(data["exported"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise TracewheelError(f"{self.path}: not a trace-export state file ({err}); "
                                    f"move it away to start over") from None

    def save(self, database: str) -> None:
        if self.path is None:
            return
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({"database": database, "exported": sorted(self.done)}))


def export(
    database: str,
    cfg: ExportConfig | None = None,
    *,
    state: State | None = None,
    references: References | None = None,
    summary: Summary | None = None,
    warn: Callable[[str], None] = lambda msg: None,
    quiet: bool = True,
) -> Iterator[dict]:
    """Task records from a Studio database, lazily (one run in memory at a time). ``state`` and
    ``references`` are cfg's files, opened (run() opens them)."""
    from .turns import tasks_of_run

    cfg = cfg or ExportConfig()
    projects, runs, agents, status = cfg.projects, cfg.runs, cfg.agents, cfg.status
    since, until = cfg.since, cfg.until
    summary = summary or Summary("trace-export")
    conn = open_readonly(database, cfg.timeout)
    try:
        schema = detect_schema(conn, database)
        now_ns = datetime.now(timezone.utc).timestamp() * 1e9
        extra = {"database": os.path.basename(database), "studio_schema": schema.layout.version}

        def corrupt(span_id: str, problem: str) -> None:
            summary.add("corrupt spans")
            warn(f"{database}: span {span_id}: {problem}; skipped")

        def unreadable(run: Run, turn: Turn) -> None:
            summary.add("unreadable turns")
            warn(f"{database}: run {run.id}, span {turn.span.id}: the agent's input is not a "
                 f"message we can read ({turn.unreadable}); the turn is skipped")

        def orphans(n: int) -> None:
            summary.add("spans without a run", n)
            warn(f"{database}: {n} spans have no run id; they belong to no turn and are skipped")

        for run, spans in progress(iter_runs(conn, schema, on_corrupt=corrupt,
                                             on_orphans=orphans),
                                   desc="trace-export", unit="run", quiet=quiet):
            summary.add("runs")
            if projects and run.project not in projects:
                continue
            if runs and run.id not in runs and run.name not in runs:
                continue
            last_end = max((s.end_ns for s in spans), default=0)
            run_settled = run.status == "done" or now_ns - last_end > cfg.settle * 1e9
            try:
                records = list(tasks_of_run(run, spans, unit=cfg.unit, source_extra=extra,
                                            on_unreadable=lambda turn, r=run: unreadable(r, turn)))
            except (AttributeError, TypeError, KeyError, ValueError):
                # Spans of a shape no Studio writes are corrupt spans already (spans.py checks
                # every key the export reads); this is the net under that check: the run is
                # counted and skipped, the export goes on.
                summary.add("unreadable runs")
                warn(f"{database}: run {run.id}: a span has attributes of an unexpected shape; "
                     f"the run is skipped")
                continue
            for i, record in enumerate(records):
                src = record["source"]
                if agents and src.get("agent") not in agents:
                    continue
                if (since or until) and src.get("time"):
                    try:
                        when = parse_time(src["time"])
                    except ValueError as err:
                        raise TracewheelError(f"{database}: run {run.id}: the time of "
                                              f"{record['id']}: {err}") from None
                    if (since and when < since) or (until and when >= until):
                        continue
                if status and record["status"] != status:
                    continue
                if state is not None:
                    if record["id"] in state.done:
                        summary.add("already exported")
                        continue
                    # A run's last turn may still get feedback: wait until the run is over.
                    later = any(r["source"].get("agent") == src.get("agent")
                                for r in records[i + 1:])
                    if not (later or run_settled):
                        summary.add("in progress")
                        continue
                    state.done.add(record["id"])
                if record["status"] == "error":
                    summary.add("errored")
                if references is not None and record["reference"] is None:
                    record["reference"] = references.reference_for(record)
                    summary.add("with a reference", record["reference"] is not None)
                yield record
        conn.check_unchanged(database)
    finally:
        conn.close()




def run(cfg: ExportConfig, database: str, output: str | None, *, quiet: bool = False) -> None:
    """Export ``database`` to ``output`` (stdout when None, else atomically), say what was
    skipped and why on stderr, remember what was exported in cfg.state, print the summary."""
    summary = Summary("trace-export", "written")
    state = State(cfg.state) if cfg.state else None
    records = export(
        database, cfg, state=state, summary=summary,
        references=References(cfg.references) if cfg.references else None,
        warn=lambda msg: print(f"trace-export: {msg}", file=sys.stderr), quiet=quiet)
    with open_output(output) as out:
        for record in records:
            out.write(record)
            summary.add("written")
    if state is not None:
        state.save(database)
    summary.print(quiet)
