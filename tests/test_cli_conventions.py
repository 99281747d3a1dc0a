"""Behaviour every tool shares, tested once for all tools (the README's "Conventions every tool
follows"): --help with an example, malformed input named by line with a non-zero exit, empty
input, a closed stdout."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracewheel.config import TOOLS, tool_dir, tool_package

from conftest import JSONL_TOOLS, REQUIRED_ARGS, ROOT


def args(name: str, *more: str) -> list[str]:
    """The arguments a tool needs to get as far as reading its input, then ``more``."""
    return [*REQUIRED_ARGS.get(name, []), *more]


def tool_main(name: str):
    (ep,) = [ep for ep in entry_points(group="console_scripts") if ep.name == name]
    return ep.load()


@pytest.mark.parametrize("name", TOOLS)
def test_every_tool_answers_help_with_an_example(name):
    result = CliRunner().invoke(tool_main(name), ["--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: {name}" in result.output
    assert re.search(r"Examples?:\n    \S", result.output)  # an example pipeline, indented
    assert "--config" in result.output


@pytest.mark.parametrize("name", TOOLS)
def test_every_tool_is_installed_as_a_command(name):
    exe = shutil.which(name) or str(__import__("pathlib").Path(sys.executable).parent / name)
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"Usage: {name}" in proc.stdout


@pytest.mark.parametrize("name", TOOLS)
def test_every_tool_answers_version(name):
    from importlib.metadata import version

    exe = shutil.which(name) or str(Path(sys.executable).parent / name)
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{name} {version('tracewheel')}"


def test_output_into_a_missing_directory_is_an_error_not_a_new_folder(tmp_path):
    out = tmp_path / "no" / "such" / "tasks.jsonl"
    exe = shutil.which("trace-export") or str(Path(sys.executable).parent / "trace-export")
    db = ROOT / "tests" / "fixtures" / "studio" / "studio-1.0.5_agentscope-1.0.7.sqlite"
    proc = subprocess.run([exe, str(db), "-o", str(out)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and f"no such directory {out.parent}" in proc.stderr
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("name", TOOLS)
def test_every_tool_runs_as_a_module_under_its_own_name(name):
    """``python -m tracewheel_<tool>``: the way round another command of the same name."""
    proc = subprocess.run([sys.executable, "-m", tool_package(name), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"Usage: {name}" in proc.stdout


# What a tool's start-up must not import: each costs a noticeable part of a second (scipy through
# datasketch, pandas through sqlite-utils) or more (torch), paid by every --help and every pipe.
HEAVY = ("datasketch", "scipy", "pandas", "torch", "transformers", "numpy", "openai", "ray")


@pytest.mark.parametrize("name", TOOLS)
def test_help_imports_no_heavy_library(name):
    """--help answers from click alone: the heavy libraries are imported where they are used."""
    code = textwrap.dedent(f"""
        import sys
        from {tool_package(name)}.cli import main
        main(["--help"], standalone_mode=False)
        print("heavy:", *(m for m in {HEAVY!r} if m in sys.modules))
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "heavy:", proc.stdout[-300:]


@pytest.mark.parametrize("name", sorted(JSONL_TOOLS))
def test_malformed_line_is_reported_with_its_number(name):
    result = CliRunner().invoke(tool_main(name), args(name), input='\n{"id": 1\n')
    assert result.exit_code == 1
    assert "<stdin>:2: invalid JSON" in result.output
    assert "--skip-invalid" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", sorted(JSONL_TOOLS))
def test_record_of_the_wrong_kind_is_reported_with_its_number(name, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"hello": "world"}\n')
    result = CliRunner().invoke(tool_main(name), args(name, str(path)))
    assert result.exit_code == 1
    assert f"{path}:1: not a valid {JSONL_TOOLS[name]} record" in result.output


@pytest.mark.parametrize("name", sorted(JSONL_TOOLS))
def test_skip_invalid_counts_bad_lines_in_the_summary(name):
    result = CliRunner().invoke(tool_main(name), args(name, "--skip-invalid"),
                                input="{bad\n[1]\n")
    assert re.search(r": 0 read, .*2 invalid \(1 bad JSON, 1 not an object\)", result.output)


@pytest.mark.parametrize("name", sorted(JSONL_TOOLS))
def test_missing_input_file_is_a_usage_error(name, tmp_path):
    result = CliRunner().invoke(tool_main(name), args(name, str(tmp_path / "nope.jsonl")))
    assert result.exit_code == 2
    assert "nope.jsonl" in result.output and "No such file" in result.output


def test_trace_export_reports_a_missing_database(tmp_path):
    result = CliRunner().invoke(tool_main("trace-export"), [str(tmp_path / "none.sqlite")])
    assert result.exit_code == 2
    assert "none.sqlite" in result.output


WRITER = textwrap.dedent("""
    from tracewheel.cli import common_options, output_option, tool_command
    from tracewheel.jsonl import open_output

    @tool_command("numbers")
    @common_options
    @output_option
    def main(output, quiet, verbose):
        '''Writes many records.'''
        with open_output(output) as out:
            for i in range(200_000):
                out.write({"n": i, "pad": "x" * 50})

    main()
""")


def test_closed_stdout_ends_a_tool_quietly(tmp_path):
    """`tool | head -1`: the shared command class turns the broken pipe into a quiet exit."""
    script = tmp_path / "many_records.py"
    script.write_text(WRITER)
    proc = subprocess.run(
        f"'{sys.executable}' '{script}' | head -1", shell=True, capture_output=True, text=True,
        timeout=120, executable="/bin/bash",
    )
    assert proc.stdout == '{"n":0,"pad":"' + "x" * 50 + '"}\n'
    assert proc.stderr == ""


@pytest.mark.parametrize("name", sorted(JSONL_TOOLS))
def test_real_tools_piped_into_head_print_no_traceback(name, tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_text("{bad\n" * 50_000)
    exe = str(__import__("pathlib").Path(sys.executable).parent / name)
    extra = " ".join(f"'{a}'" for a in REQUIRED_ARGS.get(name, []))
    proc = subprocess.run(f"'{exe}' {extra} --skip-invalid '{big}' | head -1", shell=True,
                          capture_output=True, text=True, timeout=120, executable="/bin/bash")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", TOOLS)
def test_each_tool_readme_shows_its_current_help(name):
    """The help text is the manual's source: a README out of date with --help fails here,
    the help of each subcommand (`rollout record`) included."""
    command = tool_main(name)
    readme = (tool_dir(name) / "README.md").read_text()
    subcommands = [s for s in getattr(command, "commands", {}) if s != command.default]
    for args in [[], *([s] for s in subcommands)]:
        result = CliRunner().invoke(command, [*args, "--help"], terminal_width=100)
        assert result.exit_code == 0, result.output
        assert result.output.rstrip() in readme, \
            f"run `make docs`: the README lacks the current `{name} {' '.join(args)} --help`"


def _started_writing(tmp_path: Path, name: str, kind: str, *args: str):
    """A tool run with ``-o tmp_path/out.jsonl`` that has read a first record and waits for
    more on its stdin: its temporary file is there."""
    exe = str(Path(sys.executable).parent / name)
    out = tmp_path / "out.jsonl"
    # SIGINT as a terminal sends it: a suite started in the background (`make test &`) has it
    # ignored, and a child would inherit that.
    proc = subprocess.Popen([exe, *args, "-o", str(out)], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = {"task": '{"id": "t1", "query": "q", "answer": "4"}\n',
             "rollout": '{"id": "r/0", "task_id": "r", "group": "r", "sample": 0, "calls": [],'
                        ' "status": "ok"}\n'}[kind]
    proc.stdin.write(first)
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.jsonl.*.tmp")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    return proc, out


@pytest.mark.parametrize("name, kind, args", [("ctx-merge", "rollout", []),
                                              ("trace-filter", "task", ["--no-judge"])])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_leaves_no_temporary_file_and_no_output(tmp_path, name, kind, args, sig):
    proc, out = _started_writing(tmp_path, name, kind, *args)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == (128 + sig if sig != signal.SIGINT else 130)
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary file


def test_the_leftover_of_a_killed_run_is_removed_by_the_next(tmp_path):
    proc, out = _started_writing(tmp_path, "ctx-merge", "rollout")
    proc.kill()
    proc.wait(timeout=60)
    (leftover,) = tmp_path.glob(".out.jsonl.*.tmp")  # SIGKILL cannot be cleaned up after
    exe = str(Path(sys.executable).parent / "ctx-merge")
    done = subprocess.run([exe, "-o", str(out)], input="", capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert not leftover.exists() and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def _tasks(n: int) -> str:
    return "".join(json.dumps({"id": f"t{i}", "query": f"What is {i} + 2?", "answer": str(i + 2),
                               "messages": [{"role": "user", "content": f"What is {i} + 2?"},
                                            {"role": "assistant", "content": str(i + 2)}]})
                   + "\n" for i in range(n))


STOPPING = {"trace-filter": ["--no-judge"], "ctx-merge": ["--tokenizer", "smollm2-135m"]}


@pytest.mark.parametrize("name", sorted(STOPPING))
def test_a_summary_says_where_a_run_stopped(name, tmp_path):
    """Counts of a run cut short must not read as a whole run's: a bad line, or a reader that
    went away (`| head -1`), is said in the summary."""
    exe = str(Path(sys.executable).parent / name)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_tasks(3) + '{"bad\n' + _tasks(2))
    proc = subprocess.run([exe, *STOPPING[name], str(bad)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    summary, error = proc.stderr.strip().splitlines()[-2:]
    assert summary.startswith(f"{name}: ") and "stopped at line 4" in summary, proc.stderr
    assert error.startswith("Error: ") and "bad.jsonl:4" in error

    many = tmp_path / "many.jsonl"
    many.write_text(_tasks(3000))  # more than a pipe holds
    args = " ".join(f"'{a}'" for a in STOPPING[name])
    proc = subprocess.run(f"'{exe}' {args} '{many}' | head -1", shell=True, capture_output=True,
                          text=True, timeout=120, executable="/bin/bash")
    assert "output closed" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
