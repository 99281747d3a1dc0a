"""Rewrite the Usage block of each tool's README from its current --help (`make docs`)."""

from __future__ import annotations

import re
import sys
from importlib.metadata import entry_points
from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ["trace-export", "trace-filter", "task-augment", "rollout", "ctx-merge", "train"]


def help_text(name: str) -> str:
    (ep,) = [ep for ep in entry_points(group="console_scripts") if ep.name == name]
    return CliRunner().invoke(ep.load(), ["--help"], terminal_width=100).output.rstrip()


def main() -> int:
    for name in TOOLS:
        path = ROOT / "tools" / name / "README.md"
        text = path.read_text()
        block = f"## Usage\n\n```\n{help_text(name)}\n```\n"
        new, n = re.subn(r"## Usage\n\n```\n.*?\n```\n", lambda m, b=block: b, text, flags=re.S)
        if n != 1:
            print(f"{path}: no '## Usage' block to update", file=sys.stderr)
            return 1
        if new != text:
            path.write_text(new)
            print(f"updated {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
