"""``python -m tracewheel_trace_filter``: the trace-filter command by its module.

For a PATH where another ``trace-filter`` comes first."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="trace-filter")
