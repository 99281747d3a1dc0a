"""``python -m tracewheel_task_augment``: the task-augment command by its module.

For a PATH where another ``task-augment`` comes first."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="task-augment")
