"""Which cores a vLLM started on a CPU binds its worker to, so that two servers on one machine do
not share a core. vLLM's CPU build binds its worker by itself ("auto": on x86, core 0 up, one
core kept for its scheduler) whatever else runs: a second server beside a first took 10 minutes
to load, both workers on core 0.

Each server the launcher starts claims its cores in a file of its own under /dev/shm (or /tmp)
(named by the server's process id; a claim whose process is gone is void), under a lock, so two
servers started at the same moment see each other. A server with nothing else running keeps
vLLM's own choice, and claims the core it starts from; a server started beside others takes
the cores that no claim and no running vLLM worker holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

BIND = "VLLM_CPU_OMP_THREADS_BIND"


# Machine-wide, whatever TMPDIR each program has (the claims must meet), and apart from the
# temp folder a server is checked to leave as it found it.
CLAIMS_ROOT = next((p for p in ("/dev/shm", "/tmp") if os.path.isdir(p)), tempfile.gettempdir())


def _claims_dir(make: bool = True) -> Path:
    path = Path(CLAIMS_ROOT) / f"tracewheel-cores-{os.getuid()}"
    if make:
        path.mkdir(exist_ok=True)
    return path


def processes(file: str) -> Iterator[tuple[int, str]]:
    """``(pid, text)`` of ``/proc/PID/FILE`` for each process whose file can be read (Linux's
    /proc; none elsewhere)."""
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    yield int(entry), Path(f"/proc/{entry}/{file}").read_text()
                except OSError:
                    continue


def cores_in_use() -> set[int]:
    """The cores the vLLM CPU workers running on this machine are bound to (none known where
    there is no /proc)."""
    used: set[int] = set()
    for pid, name in processes("comm"):
        if name.startswith("VLLM::Worker"):
            with contextlib.suppress(OSError):
                used |= os.sched_getaffinity(pid)
    return used


def _claimed(folder: Path) -> set[int]:
    """The cores live servers claimed; the claims of servers that are gone are removed."""
    held: set[int] = set()
    for claim in folder.glob("*.cores"):
        if Path(f"/proc/{claim.stem}").exists():
            with contextlib.suppress(OSError, ValueError):
                held |= {int(c) for c in claim.read_text().split(",") if c}
        else:
            claim.unlink(missing_ok=True)
    return held


@contextlib.contextmanager
def choosing(env: dict[str, str]) -> Iterator[Callable[[int], None]]:
    """Around a server's start: sets ``env``'s binding where other servers hold cores (unless
    the user set one), and yields ``claim(pid)``, which records the server's cores once its
    process exists. The lock is held until the block ends."""
    if BIND in env:
        yield lambda pid: None
        return
    folder = _claims_dir()
    with open(folder / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        allowed = sorted(os.sched_getaffinity(0))
        held = _claimed(folder) | cores_in_use()
        free = [c for c in allowed if c not in held]
        if held and free:
            env[BIND] = ",".join(map(str, free))
            mine = free
        else:  # alone (or no core left): vLLM's own choice, which starts at the first core
            mine = allowed[:1]

        def claim(pid: int) -> None:
            (folder / f"{pid}.cores").write_text(",".join(map(str, mine)))

        yield claim


def release(pid: int) -> None:
    """The server ``pid`` stopped: its claim goes."""
    with contextlib.suppress(OSError):
        (_claims_dir(make=False) / f"{pid}.cores").unlink(missing_ok=True)
