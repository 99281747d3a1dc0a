"""``python -m tracewheel_ctx_merge``: the ctx-merge command by its module.

For a PATH where another ``ctx-merge`` comes first."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="ctx-merge")
