"""trace-export: AgentScope Studio databases to task records."""

from __future__ import annotations

from datetime import datetime

import click

from tracewheel.cli import common_options, output_option, tool_command

from .config import UNITS, ExportConfig
from .run import parse_time, run

D = ExportConfig()  # the defaults, stated once (config.py)


@tool_command("trace-export")
@common_options
@click.argument("database", type=click.Path(exists=True, dir_okay=False))
@output_option
@click.option("--unit", type=click.Choice(UNITS), default=D.unit, show_default=True,
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
@click.option("--settle", type=float, default=D.settle, show_default=True,
              help="With --state: seconds after a run's last span before its last turn counts as "
                   "finished (runs marked done count at once).")
@click.option("--timeout", type=float, default=D.timeout, show_default=True,
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
    def when(value: str | None, option: str) -> datetime | None:
        try:
            return parse_time(value) if value else None
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint=option) from None

    cfg = ExportConfig(unit=unit, projects=projects, runs=runs, agents=agents,
                       since=when(since, "--since"), until=when(until, "--until"),
                       status=status, state=state_path, settle=settle, timeout=timeout,
                       references=references_path)
    run(cfg, database, output, quiet=quiet)
