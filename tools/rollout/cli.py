"""rollout: command line. Not built yet (issue #5): it checks its input and says so."""

from __future__ import annotations

from typing import IO

from flywheel.cli import (
    check_input_then_stop,
    common_options,
    input_options,
    output_option,
    tool_command,
)


@tool_command("rollout")
@common_options
@input_options
@output_option
def main(input: IO[bytes], output: str | None, skip_invalid: bool, quiet: bool,
         verbose: int) -> None:
    """Run an agent workflow on each task N times against a recording vLLM endpoint.

    Reads task records from INPUT (default stdin).

    \b
    Example:
      rollout --workflow examples/math_agent.py:run -n 4 < tasks.jsonl > rollouts.jsonl

    Not built yet (issue #5): for now it checks that its input is valid and says so.
    """
    check_input_then_stop("rollout", 5, "task", input,
                          skip_invalid=skip_invalid, quiet=quiet, verbose=verbose)
