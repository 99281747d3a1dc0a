"""Rewrite the usage blocks of each tool's README from its current --help (`make docs`): the
`## Usage` block from the tool's --help, and for a tool with subcommands a
`## Usage: SUB` block for each subcommand other than the default."""

from __future__ import annotations

import re
import sys
from importlib.metadata import entry_points
from pathlib import Path

import click
from click.testing import CliRunner

from tracewheel.config import TOOLS, tool_dir

ROOT = Path(__file__).resolve().parent.parent


def tool_main(name: str) -> click.Command:
    (ep,) = [ep for ep in entry_points(group="console_scripts") if ep.name == name]
    return ep.load()


def usage_blocks(name: str) -> dict[str, str]:
    """Heading -> help text: ``Usage`` for the tool, ``Usage: SUB`` for each other
    subcommand of a tool with subcommands."""
    command = tool_main(name)

    def help_of(*args: str) -> str:
        return CliRunner().invoke(command, [*args, "--help"], terminal_width=100).output.rstrip()

    blocks = {"Usage": help_of()}
    default = getattr(command, "default", None)
    for sub in getattr(command, "commands", {}):
        if sub != default:
            blocks[f"Usage: {sub}"] = help_of(sub)
    return blocks


def main() -> int:
    for name in TOOLS:
        path = tool_dir(name) / "README.md"
        text = original = path.read_text()
        for heading, help_text in usage_blocks(name).items():
            block = f"## {heading}\n\n```\n{help_text}\n```\n"
            text, n = re.subn(rf"## {re.escape(heading)}\n\n```\n.*?\n```\n",
                              lambda m, b=block: b, text, flags=re.S)
            if n == 0:  # a new subcommand: its block goes at the end
                text = text.rstrip("\n") + f"\n\n{block}"
        if text != original:
            path.write_text(text)
            print(f"updated {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
