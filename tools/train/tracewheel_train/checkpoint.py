"""Where training results go on disk, each written whole or not at all.

- the final model: a Hugging Face model directory with the tokenizer (what ``vllm serve`` takes),
  written into a temporary directory beside ``--out`` and renamed into place;
- step checkpoints ``<checkpoint dir>/step-000100/`` (``--save-every``), for ``--resume``: the
  Accelerate state (weights, optimizer, random generators) and ``trainer_state.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tracewheel.errors import TracewheelError

MARKER = "tracewheel_train.json"  # what train writes into every model directory it makes
STATE = "trainer_state.json"


def check_out_dir(out: str | os.PathLike) -> None:
    """Refuse an ``--out`` that would replace something train did not make."""
    path = Path(out)
    if not path.exists():
        return
    if not path.is_dir():
        raise TracewheelError(f"--out {out}: exists and is not a directory")
    if any(path.iterdir()) and not (path / MARKER).is_file():
        raise TracewheelError(f"--out {out}: exists and is not a model train wrote (no {MARKER}); "
                            f"remove it or choose another directory")


def check_adapter(path: str | os.PathLike, rank: int) -> str:
    """A LoRA adapter directory to start from, refused where it is not one or its rank is not
    ``rank`` (an adapter of another rank would not fit the server's LoRA slots)."""
    config = Path(path) / "adapter_config.json"
    try:
        found = json.loads(config.read_text()).get("r")
    except (OSError, ValueError) as err:
        raise TracewheelError(f"{path}: not a LoRA adapter ({config}: {err})") from None
    if found != rank:
        raise TracewheelError(f"{path}: an adapter of rank {found}, where --lora-r is {rank} "
                              f"(train every policy at one rank)")
    return str(path)


def temp_dir_beside(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` to ``final``; an older ``final`` is moved aside first, then
    removed (a directory cannot be renamed over a non-empty one)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """A temporary directory that becomes ``final`` when the block ends without an error."""
    final = Path(final)
    tmp = temp_dir_beside(final)
    try:
        yield tmp
        # mkdtemp and some writers make 0600 files: a model directory is for others to serve.
        mask = _umask()
        os.chmod(tmp, 0o777 & ~mask)
        for path in tmp.rglob("*"):
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_model(source: Path, out: str | os.PathLike, config: dict[str, Any]) -> None:
    """``--allow-empty`` with nothing to train: the starting model, unchanged, as ``out``."""
    with atomic_dir(out) as tmp:
        for path in Path(source).iterdir():
            if path.is_file() and not path.name.startswith(".") and path.name != MARKER:
                shutil.copy2(path, tmp / path.name)
        write_json(tmp / MARKER, {"tool": "train", "base_model": str(source),
                                  "algo": config.get("algo"), "steps": 0, "samples": 0,
                                  "weights": "unchanged", "config": config})


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """The finished step checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.name.startswith("step-") and (p / STATE).is_file():
            with contextlib.suppress(ValueError):
                found.append((int(p.name[5:]), p))
    return sorted(found)


def find_resume_dir(resume: str, root: Path) -> Path:
    """``latest`` (the newest step checkpoint under ``root``) or a step checkpoint directory."""
    if resume != "latest":
        path = Path(resume)
        if not (path / STATE).is_file():
            raise TracewheelError(f"--resume {resume}: not a step checkpoint (no {STATE} in it)")
        return path
    found = step_dirs(root)
    if not found:
        raise TracewheelError(f"--resume: no step checkpoint in {root} (--save-every N writes "
                            f"them)")
    return found[-1][1]


def prune(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` step checkpoints."""
    for _, path in step_dirs(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
