"""``python -m tracewheel.evalset``: an evaluation set that training never sees.

The held-out split of a few dozen production tasks is too small to tell a real gain from noise,
so the loop also scores every model on a labelled evaluation set (``EVAL=``; the demo's is
``examples/math-eval.jsonl``). That set is only worth its numbers if nothing of it reaches
training: this step copies it through, and refuses it, naming the file and line, where a task
has no known answer, or shares its id or its normalised query (``tracewheel.dedup.normalize_text``:
case, width, punctuation and spacing aside) with a training task, a paraphrase, or the task a
paraphrase was made from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO

import click

from .cli import Summary, common_options, output_option, read_input, tool_command
from .dedup import normalize_text
from .errors import RecordError
from .jsonl import ReadStats, open_output, read_jsonl
from .split import parents


class Training:
    """What training sees: task ids (with the tasks paraphrases were made from) and queries."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}      # id -> where it was seen
        self.queries: dict[str, str] = {}  # normalised query -> the training task's id

    def read(self, path: Path) -> None:
        with path.open("rb") as stream:
            for task in read_jsonl(stream, str(path), hint=None):  # the training files
                task_id = str(task.get("id"))
                self.ids.setdefault(task_id, f"a training task in {path}")
                for parent in parents(task):
                    self.ids.setdefault(parent, f"the origin of paraphrase {task_id} in {path}")
                query = task.get("query")
                if isinstance(query, str) and query.strip():
                    self.queries.setdefault(normalize_text(query), task_id)

    def check(self, task: dict) -> None:
        """Raise RecordError where ``task`` cannot be an evaluation task."""
        task_id = str(task["id"])
        if task.get("reference") in (None, ""):
            raise RecordError(f"task {task_id} has no reference: an evaluation task needs its "
                              f"known answer")
        if task_id in self.ids:
            raise RecordError(f"task {task_id} has the id of {self.ids[task_id]}")
        query = task.get("query")
        same = self.queries.get(normalize_text(query)) if isinstance(query, str) else None
        if same is not None:
            raise RecordError(f"task {task_id} asks what training task {same} asks")


def check_disjoint(eval_tasks: IO[bytes] | Sequence[IO[bytes]], training: list[Path],
                   output: str | None, *, skip_invalid: bool = False) -> Summary:
    """Copy the evaluation tasks (one file, or several one after another: say, problems of
    two sources) to ``output`` when none of them is seen by training and no id comes twice
    (or, with ``skip_invalid``, those that pass; the others are counted as invalid)."""
    seen = Training()
    for path in training:
        seen.read(path)
    ids: set[str] = set()

    def check(task: dict) -> None:
        seen.check(task)
        if str(task["id"]) in ids:
            raise RecordError(f"task {task['id']} comes twice in the evaluation set")
        ids.add(str(task["id"]))

    summary = Summary("evalset", "read", "written", "invalid")
    stats = ReadStats()
    streams = [eval_tasks] if not isinstance(eval_tasks, Sequence) else eval_tasks
    with open_output(output) as out:
        for stream in streams:
            for task in read_input(stream, "task", skip_invalid=skip_invalid, stats=stats,
                                   tool="evalset", also=check):
                summary.add("read")
                out.write(task)
                summary.add("written")
    summary.absorb(stats)
    return summary


@tool_command("tracewheel.evalset")
@common_options
@click.option("--skip-invalid", is_flag=True,
              help="Skip bad input lines (counted in the summary) instead of stopping at the "
                   "first.")
@click.argument("inputs", metavar="[FILE]...", nargs=-1, type=click.File("rb", lazy=False))
@output_option
@click.option("--train", "training", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file of training tasks (paraphrases included); repeat for more.")
def main(inputs: tuple[IO[bytes], ...], output: str | None, skip_invalid: bool, quiet: bool,
         verbose: int, training: tuple[Path, ...]) -> None:
    """Copy an evaluation set (stdin, or FILEs one after another) to stdout or -o, after
    checking that none of its tasks is a training task: same id, same normalised query, or
    the origin of a paraphrase. Every task needs a reference (its known answer), and no id may
    come twice. With --skip-invalid such tasks are left out and counted.

    \b
    Examples:
      python -m tracewheel.evalset --train runs/demo/train.jsonl examples/gsm8k-eval.jsonl \\
          examples/math-eval.jsonl -o runs/demo/eval-tasks.jsonl
    """
    streams = list(inputs) or [click.get_binary_stream("stdin")]
    check_disjoint(streams, list(training), output, skip_invalid=skip_invalid).print(quiet)


if __name__ == "__main__":
    main()
