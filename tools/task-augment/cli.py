"""task-augment: command line. Not built yet (issue #8): it checks its input and says so."""

from __future__ import annotations

from typing import IO

from flywheel.cli import (
    check_input_then_stop,
    common_options,
    input_options,
    output_option,
    tool_command,
)


@tool_command("task-augment")
@common_options
@input_options
@output_option
def main(input: IO[bytes], output: str | None, skip_invalid: bool, quiet: bool,
         verbose: int) -> None:
    """Grow a small task set: new tasks in the style of a few, paraphrases, tasks from documents.

    Reads task records from INPUT (default stdin).

    \b
    Example:
      task-augment expand -n 200 < tasks.jsonl > more.jsonl

    Not built yet (issue #8): for now it checks that its input is valid and says so.
    """
    check_input_then_stop("task-augment", 8, "task", input,
                          skip_invalid=skip_invalid, quiet=quiet, verbose=verbose)
