"""ctx-merge: command line. Not built yet (issue #6): it checks its input and says so."""

from __future__ import annotations

from typing import IO

from flywheel.cli import (
    check_input_then_stop,
    common_options,
    input_options,
    output_option,
    tool_command,
)


@tool_command("ctx-merge")
@common_options
@input_options
@output_option
def main(input: IO[bytes], output: str | None, skip_invalid: bool, quiet: bool,
         verbose: int) -> None:
    """Merge the LLM calls of each trajectory into few training sequences with loss masks.

    Reads rollout records from INPUT (default stdin).

    \b
    Example:
      ctx-merge < rollouts.jsonl > samples.jsonl

    Not built yet (issue #6): for now it checks that its input is valid and says so.
    """
    check_input_then_stop("ctx-merge", 6, "rollout", input,
                          skip_invalid=skip_invalid, quiet=quiet, verbose=verbose)
