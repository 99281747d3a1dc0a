"""Run model-written Python code apart from the tool's own process.

The code runs in a child process with a wall-clock timeout, CPU-time, memory, file-size and
process limits, in a fresh temporary working directory that is removed afterwards, with an
environment that holds none of the parent's variables (so no API keys), and in Python's
isolated mode (no user site, no PYTHON* variables). The whole process group is killed at the
timeout, so a fork bomb or a grandchild that ignores signals does not outlive it.

This is a guard against accidents and runaway code, not a security boundary against a
determined attacker: for that, run the workers in a container or VM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_KEEP = 20_000  # characters of stdout/stderr kept


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def text(self) -> str:
        """What a tool returns to the model: the output, and what went wrong."""
        parts = [self.stdout.rstrip()] if self.stdout.strip() else []
        if self.stderr.strip():
            parts.append(self.stderr.rstrip())
        if self.timed_out:
            parts.append("Error: the code ran past its time limit and was stopped.")
        elif self.returncode not in (0, None):
            parts.append(f"(exit status {self.returncode})")
        return "\n".join(parts) or "(no output)"


# Sets the limits, then becomes the script's interpreter: a preexec_fn would do the same, but
# is not safe in a process that runs threads (the tools do), and could deadlock the child.
_LAUNCHER = """
import os, resource, sys
cpu, memory, files, processes = (int(v) for v in sys.argv[1:5])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (files, files))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
try:
    resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
except (ValueError, OSError):
    pass
os.execv(sys.executable, [sys.executable, "-I", "-B", sys.argv[5]])
"""


def _clip(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= _KEEP else text[:_KEEP] + f"\n[... {len(text) - _KEEP} more]"


def run_python(code: str, *, timeout: float = 10.0, memory_mb: int = 1024,
               file_mb: int = 16, processes: int = 64,
               python: str | None = None) -> SandboxResult:
    """Run ``code`` as a script in a sandboxed child Python; never raises for the code's
    failures (they are in the result)."""
    with tempfile.TemporaryDirectory(prefix="tracewheel-sandbox-") as workdir:
        script = Path(workdir) / "main.py"
        script.write_text(code, encoding="utf-8")
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
               "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"}
        limits = [max(1, int(timeout) + 1), memory_mb * 2**20, file_mb * 2**20, processes]
        proc = subprocess.Popen(
            [python or sys.executable, "-I", "-B", "-c", _LAUNCHER, *map(str, limits),
             str(script)], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
            return SandboxResult(_clip(out), _clip(err), proc.returncode, False)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return SandboxResult(_clip(out), _clip(err), proc.returncode, True)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever the code left behind
