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
    summary = summary or Summary("trace-export")
    told = _Faults(database, summary, warn)
    conn = open_readonly(database, cfg.timeout)
    try:
        schema = detect_schema(conn, database)
        now_ns = datetime.now(timezone.utc).timestamp() * 1e9
        extra = {"database": os.path.basename(database), "studio_schema": schema.studio.version}
        for run, spans in progress(iter_runs(conn, schema, on_corrupt=told.corrupt,
                                             on_orphans=told.orphans),
                                   desc="trace-export", unit="run", quiet=quiet):
            summary.add("runs")
            if (cfg.projects and run.project not in cfg.projects) or \
                    (cfg.runs and run.id not in cfg.runs and run.name not in cfg.runs):
                continue
            last_end = max((s.end_ns for s in spans), default=0)
            run_settled = run.status == "done" or now_ns - last_end > cfg.settle * 1e9
            try:
                records = list(tasks_of_run(run, spans, unit=cfg.unit, source_extra=extra,
                                            on_unreadable=lambda turn, r=run: told.unreadable(
                                                r, turn)))
            except (AttributeError, TypeError, KeyError, ValueError):
                # Spans of a shape no Studio writes are corrupt spans already (spans.py checks
                # every key the export reads); this is the net under that check: the run is
                # counted and skipped, the export goes on.
                summary.add("unreadable runs")
                warn(f"{database}: run {run.id}: a span has attributes of an unexpected shape; "
                     f"the run is skipped")
                continue
            for i, record in enumerate(records):
                if not _selected(record, cfg, f"{database}: run {run.id}"):
                    continue
                if state is not None and not _due(record, records[i + 1:], run_settled, state,
                                                  summary):
                    continue
                if record["status"] == "error":
                    summary.add("errored")
                if references is not None and record["reference"] is None:
                    record["reference"] = references.reference_for(record)
                    summary.add("with a reference", record["reference"] is not None)
                yield record
        conn.check_unchanged(database)
    finally:
        conn.close()


class _Faults:
    """What the export skips, counted and told (``warn``) with where it is."""

    def __init__(self, database: str, summary: Summary, warn: Callable[[str], None]):
        self.database, self.summary, self.warn = database, summary, warn

    def corrupt(self, span_id: str, problem: str) -> None:
        self.summary.add("corrupt spans")
        self.warn(f"{self.database}: span {span_id}: {problem}; skipped")

    def unreadable(self, run: Run, turn: Turn) -> None:
        self.summary.add("unreadable turns")
        self.warn(f"{self.database}: run {run.id}, span {turn.span.id}: the agent's input is "
                  f"not a message we can read ({turn.unreadable}); the turn is skipped")

    def orphans(self, n: int) -> None:
        self.summary.add("spans without a run", n)
        self.warn(f"{self.database}: {n} spans have no run id; they belong to no turn and are "
                  f"skipped")


def _selected(record: dict, cfg: ExportConfig, where: str) -> bool:
    """Whether a task passes --agent, --since, --until and --status."""
    src = record["source"]
    if cfg.agents and src.get("agent") not in cfg.agents:
        return False
    if (cfg.since or cfg.until) and src.get("time"):
        try:
            when = parse_time(src["time"])
        except ValueError as err:
            raise TracewheelError(f"{where}: the time of {record['id']}: {err}") from None
        if (cfg.since and when < cfg.since) or (cfg.until and when >= cfg.until):
            return False
    return not cfg.status or record["status"] == cfg.status


def _due(record: dict, later: list[dict], run_settled: bool, state: State,
         summary: Summary) -> bool:
    """With --state: whether a task goes out now (and is marked exported). Not when an earlier
    export had it; not while it is its agent's last turn in a run still going (that turn may
    still get feedback)."""
    if record["id"] in state.done:
        summary.add("already exported")
        return False
    agent = record["source"].get("agent")
    if not run_settled and not any(r["source"].get("agent") == agent for r in later):
        summary.add("in progress")
        return False
    state.done.add(record["id"])
    return True


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
