"""Model-written code runs apart: limits, a fresh directory, no secrets, a hard timeout."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tracewheel.sandbox import run_python


def test_output_and_errors_come_back():
    assert run_python("print(6 * 7)").stdout == "42\n"
    failed = run_python("1 / 0")
    assert failed.returncode == 1 and "ZeroDivisionError" in failed.text()


def test_the_environment_holds_no_secrets_and_the_directory_is_fresh(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    result = run_python("import os; print(sorted(os.environ)); print(os.listdir('.'))")
    assert "OPENAI_API_KEY" not in result.stdout and "sk-secret" not in result.stdout
    assert "['main.py']" in result.stdout
    cwd = run_python("import os; print(os.getcwd())").stdout.strip()
    assert not os.path.exists(cwd)  # removed afterwards


def test_a_runaway_is_stopped_at_the_timeout():
    started = time.monotonic()
    result = run_python("while True: pass", timeout=1)
    assert result.timed_out and time.monotonic() - started < 5
    assert "time limit" in result.text()


def test_a_child_that_outlives_the_script_is_killed_too():
    result = run_python(
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "import time; time.sleep(60)", timeout=1)
    assert result.timed_out
    pid = int(result.stdout.split()[0])
    time.sleep(0.2)
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_memory_is_limited():
    result = run_python("x = bytearray(2 * 1024 ** 3)", memory_mb=256)
    assert result.returncode != 0 and "MemoryError" in result.stderr
