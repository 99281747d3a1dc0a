"""The design card's layout: one folder per tool under tools/, named as its command, the library
in shared/, and every module's file path ending with its import path."""

from __future__ import annotations

import importlib
from pathlib import Path

from tracewheel.config import TOOLS, tool_dir, tool_package

ROOT = Path(__file__).resolve().parent.parent


def test_tools_holds_one_folder_per_command():
    assert sorted(p.name for p in (ROOT / "tools").iterdir() if p.is_dir()) == sorted(TOOLS)
    for name in TOOLS:
        assert tool_dir(name) == ROOT / "tools" / name
        assert (tool_dir(name) / "README.md").is_file()


def _modules(folder: Path) -> list[tuple[str, Path]]:
    """(import name, file) of every module below ``folder``, a directory on the import path."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def test_every_module_lives_at_its_import_path():
    roots = [ROOT / "shared"] + [ROOT / "tools" / name for name in TOOLS]
    modules = [m for root in roots for m in _modules(root)]
    packages = {name.split(".")[0] for name, _ in modules}
    assert packages == {"tracewheel"} | {tool_package(name) for name in TOOLS}
    for name, path in modules:
        if name.endswith("__main__"):
            continue  # importing it runs the command
        module = importlib.import_module(name)
        assert Path(module.__file__).resolve() == path.resolve(), name


# Rooms that grew past these sizes held several jobs each (the recorder had six); split by job,
# a module stays readable in one sitting and a function on one screen.
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 60


def test_no_module_or_function_outgrows_a_reader():
    import ast

    too_long = []
    for folder in (ROOT / "shared", ROOT / "tools"):
        for path in sorted(folder.rglob("*.py")):
            text = path.read_text()
            where = path.relative_to(ROOT)
            if len(text.splitlines()) > MAX_MODULE_LINES:
                too_long.append(f"{where}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        too_long.append(f"{where}:{node.lineno}: {node.name}, {lines} lines")
    assert not too_long, "split by job: " + "; ".join(too_long)
