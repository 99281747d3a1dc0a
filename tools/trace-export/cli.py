"""trace-export: command line. Not built yet (issue #3)."""

from __future__ import annotations

import click

from flywheel.cli import common_options, not_built_yet, output_option, tool_command


@tool_command("trace-export")
@common_options
@click.argument("database", type=click.Path(exists=True, dir_okay=False))
@output_option
def main(database: str, output: str | None, quiet: bool, verbose: int) -> None:
    """Read an AgentScope Studio database and write one task record per agent turn.

    \b
    Example:
      trace-export ~/AgentScope-Studio/database.sqlite | trace-filter --rubrics r.txt > tasks.jsonl

    Not built yet (issue #3).
    """
    not_built_yet("trace-export", 3)
