"""trace-filter: command line. Not built yet (issue #4): it checks its input and says so."""

from __future__ import annotations

from typing import IO

from flywheel.cli import (
    check_input_then_stop,
    common_options,
    input_options,
    output_option,
    tool_command,
)


@tool_command("trace-filter")
@common_options
@input_options
@output_option
def main(input: IO[bytes], output: str | None, skip_invalid: bool, quiet: bool,
         verbose: int) -> None:
    """Keep the good tasks, drop the bad ones: an LLM judge with your rubrics, rule filters, dedup.

    Reads task records (from trace-export or task-augment) from INPUT (default stdin).

    \b
    Example:
      trace-export db.sqlite | trace-filter --rubrics rubrics.txt > tasks.jsonl

    Not built yet (issue #4): for now it checks that its input is valid and says so.
    """
    check_input_then_stop("trace-filter", 4, "task", input,
                          skip_invalid=skip_invalid, quiet=quiet, verbose=verbose)
