"""train: command line. Not built yet (issue #7): it checks its input and says so."""

from __future__ import annotations

from typing import IO

from flywheel.cli import (
    check_input_then_stop,
    common_options,
    input_options,
    output_option,
    tool_command,
)


@tool_command("train")
@common_options
@input_options
@output_option
def main(input: IO[bytes], output: str | None, skip_invalid: bool, quiet: bool,
         verbose: int) -> None:
    """Train the policy on merged samples: SFT or GRPO, with Accelerate or Ray.

    Reads sample records from INPUT (default stdin).

    \b
    Example:
      train --model smollm2-135m --algo grpo --out ckpt/ < samples.jsonl

    Not built yet (issue #7): for now it checks that its input is valid and says so.
    """
    check_input_then_stop("train", 7, "sample", input,
                          skip_invalid=skip_invalid, quiet=quiet, verbose=verbose)
