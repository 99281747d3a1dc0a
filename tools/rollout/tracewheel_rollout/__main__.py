"""``python -m tracewheel_rollout``: the rollout command by its module.

For a PATH where another ``rollout`` comes first."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="rollout")
