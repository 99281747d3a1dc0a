"""``python -m tracewheel.split``: set tasks aside for evaluation, the same ones every run.

A task is held out when a hash of the seed and its id falls under ``--fraction``: the choice is
stable (the same tasks for the same seed, whatever else the input holds) and streams. Only
original tasks are held out; a task made by task-augment from a held-out task (a paraphrase of
it) would leak the answer into training, so it goes to neither side and is counted.
"""

from __future__ import annotations

from typing import IO

import click

from .cli import Summary, common_options, input_options, output_option, read_input, tool_command
from .ids import stable_id
from .jsonl import ReadStats, open_output


def held_out(task_id: str, fraction: float, seed: int) -> bool:
    return int(stable_id(seed, task_id), 16) / 16**16 < fraction


def parents(task: dict) -> list[str]:
    """The ids a task was made from (task-augment's ``augment.parents``; [] for originals)."""
    augment = task.get("augment") or {}
    found = augment.get("parents") or augment.get("parent_ids") or augment.get("parent") or []
    return [str(p) for p in (found if isinstance(found, list) else [found])]


@tool_command("tracewheel.split")
@common_options
@input_options
@output_option
@click.option("--held-out", "held_out_path", required=True, type=click.Path(dir_okay=False),
              help="Write the held-out tasks here (atomically).")
@click.option("--fraction", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="Share of the original tasks held out.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which tasks: the same "
              "seed holds out the same tasks.")
def main(input: IO[bytes], output: str | None, skip_invalid: bool, quiet: bool, verbose: int,
         held_out_path: str, fraction: float, seed: int) -> None:
    """Split task records into training tasks (stdout or -o) and held-out tasks (--held-out).

    \b
    Examples:
      python -m tracewheel.split --held-out heldout.jsonl < tasks.jsonl > train.jsonl
    """
    summary = Summary("split", "read", "train", "held out", "leaks dropped", "invalid")
    stats = ReadStats()
    records = read_input(input, "task", skip_invalid=skip_invalid, stats=stats,
                         tool="split", verbose=verbose)
    with open_output(output) as train, open_output(held_out_path) as evaluation:
        for task in records:
            summary.add("read")
            origin = parents(task)
            if not origin and held_out(task["id"], fraction, seed):
                evaluation.write(task)
                summary.add("held out")
            elif any(held_out(p, fraction, seed) for p in origin):
                summary.add("leaks dropped")
            else:
                train.write(task)
                summary.add("train")
    summary.absorb(stats)
    summary.print(quiet)


if __name__ == "__main__":
    main()
