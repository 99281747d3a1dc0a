"""``python -m tracewheel_trace_export``: the trace-export command by its module.

For a PATH where another ``trace-export`` comes first."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="trace-export")
