"""trace-export: AgentScope Studio databases to task records."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tracewheel.cli import Summary, common_options, output_option, progress, tool_command
from tracewheel.errors import TracewheelError
from tracewheel.jsonl import atomic_path, open_output

from .references import References
from .studio import detect_schema, iter_runs, open_readonly

if TYPE_CHECKING:
    from .turns import Run, Turn

UNITS = ("turn", "call", "run")


def _parse_time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO date or time "
                                 f"(e.g. 2026-11-22 or 2026-11-22T03:50:00Z)",
                                 param_hint=option) from None
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
    *,
    unit: str = "turn",
    projects: tuple[str, ...] = (),
    runs: tuple[str, ...] = (),
    agents: tuple[str, ...] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    status: str | None = None,
    state: State | None = None,
    references: References | None = None,
    settle_seconds: float = 300.0,
    timeout: float = 30.0,
    summary: Summary | None = None,
    warn=lambda msg: None,
    quiet: bool = True,
) -> Iterator[dict]:
    """Task records from a Studio database, lazily (one run in memory at a time)."""
    from .turns import tasks_of_run

    summary = summary or Summary("trace-export")
    conn = open_readonly(database, timeout)
    try:
        schema = detect_schema(conn, database)
        now_ns = datetime.now(timezone.utc).timestamp() * 1e9
        extra = {"database": os.path.basename(database), "studio_schema": schema.version}

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
            run_settled = run.status == "done" or now_ns - last_end > settle_seconds * 1e9
            try:
                records = list(tasks_of_run(run, spans, unit=unit, source_extra=extra,
                                            on_unreadable=lambda turn, r=run: unreadable(r, turn)))
            except (AttributeError, TypeError, KeyError, ValueError) as err:
                # A span's attributes are JSON of a shape no Studio writes (a list where an
                # object belongs): the run is counted and skipped, the export goes on.
                summary.add("unreadable runs")
                warn(f"{database}: run {run.id}: a span has attributes of an unexpected shape "
                     f"({type(err).__name__}: {err}); the run is skipped")
                continue
            for i, record in enumerate(records):
                src = record["source"]
                if agents and src.get("agent") not in agents:
                    continue
                if (since or until) and src.get("time"):
                    when = _parse_time(src["time"], "time")
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


@tool_command("trace-export")
@common_options
@click.argument("database", type=click.Path(exists=True, dir_okay=False))
@output_option
@click.option("--unit", type=click.Choice(UNITS), default="turn", show_default=True,
              help="One record per agent turn, per LLM call (SFT data), or per run (sessions).")
@click.option("--project", "projects", multiple=True, help="Only this project (repeatable).")
@click.option("--run", "runs", multiple=True, help="Only this run, by id or name (repeatable).")
@click.option("--agent", "agents", multiple=True, help="Only this agent's turns (repeatable).")
@click.option("--since", help="Only turns that started at or after this ISO time (UTC).")
@click.option("--until", help="Only turns that started before this ISO time (UTC).")
@click.option("--status", type=click.Choice(["ok", "error"]),
              help="Only turns that succeeded, or only those that failed.")
@click.option("--state", "state_path", type=click.Path(dir_okay=False),
              help="Remember what was exported in FILE; later runs emit only new, finished turns.")
@click.option("--settle", type=float, default=300.0, show_default=True,
              help="With --state: seconds after a run's last span before its last turn counts as "
                   "finished (runs marked done count at once).")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for a database that Studio is writing to.")
@click.option("--references", "references_path", type=click.Path(exists=True, dir_okay=False),
              help="Known-good answers (JSONL: reference + id or query) to fill in tasks' "
                   "reference.")
def main(database: str, output: str | None, unit: str, projects: tuple[str, ...],
         runs: tuple[str, ...], agents: tuple[str, ...], since: str | None, until: str | None,
         status: str | None, state_path: str | None, settle: float, timeout: float,
         references_path: str | None, quiet: bool, verbose: int) -> None:
    """Read an AgentScope Studio database and write one task record per agent turn.

    Both Studio schemas (1.0.5 and 1.0.9) and the span formats of AgentScope 1.0.7+, 1.0.9+
    (gen_ai) and 2.x are read. The database is opened read-only and never written.

    \b
    Examples:
      trace-export ~/AgentScope-Studio/database.sqlite | trace-filter --rubrics r.txt > tasks.jsonl
      trace-export db.sqlite --project gsm8k-math-agent --status ok -o tasks.jsonl
      trace-export db.sqlite --state export.state >> tasks.jsonl    # only what is new
    """
    summary = Summary("trace-export", "written")
    state = State(state_path) if state_path else None
    records = export(
        database, unit=unit, projects=projects, runs=runs, agents=agents,
        since=_parse_time(since, "--since"), until=_parse_time(until, "--until"),
        status=status, state=state, settle_seconds=settle, timeout=timeout, summary=summary,
        references=References(references_path) if references_path else None,
        warn=lambda msg: click.echo(f"trace-export: {msg}", err=True), quiet=quiet)
    with open_output(output) as out:
        for record in records:
            out.write(record)
            summary.add("written")
    if state is not None:
        state.save(database)
    summary.print(quiet)
