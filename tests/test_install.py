"""The light install: `pip install tracewheel` without extras gives the tools a CI job runs on
a Studio database, without torch, Ray, agentscope or transformers; the others say which extra
they need. Installs the project into a fresh venv from the package registry (pip's cache)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LEGACY_DB, ROOT

HEAVY = ("torch", "ray", "agentscope", "transformers", "aiohttp", "accelerate")
FULL_VENV_MB = 2300  # the full .venv ([all,dev]) as measured; the core must be under a quarter


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) \
        / 2**20


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("core")
    source = base / "src"  # a copy: building in the checkout would write build files into it
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("shared", "tools"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(source)],
                   check=True, capture_output=True, text=True)
    return venv


@pytest.mark.slow
def test_the_core_install_is_light_and_runs_export_and_filter(core_venv):
    bin_ = core_venv / "bin"
    listed = subprocess.run([str(bin_ / "pip"), "list", "--format=freeze"],
                            capture_output=True, text=True, check=True).stdout.lower()
    installed = {line.split("==")[0] for line in listed.splitlines()}
    assert not installed & set(HEAVY), installed & set(HEAVY)
    assert _size_mb(core_venv) < FULL_VENV_MB / 4
    export = subprocess.run([str(bin_ / "trace-export"), str(LEGACY_DB)],
                            capture_output=True, check=True)
    kept = subprocess.run([str(bin_ / "trace-filter"), "--no-judge", "--require-boxed"],
                          input=export.stdout, capture_output=True, check=True)
    assert export.stdout.count(b"\n") > kept.stdout.count(b"\n") > 0
    assert b"dropped" in kept.stderr


@pytest.mark.slow
def test_a_tool_without_its_extra_says_which_to_install(core_venv, tmp_path):
    bin_ = core_venv / "bin"
    for tool, args, extra in (("rollout", ["-w", "x.py:f"], "rollout"),
                              ("train", ["--out", str(tmp_path / "m")], "train")):
        result = subprocess.run([str(bin_ / tool), *args], input="", capture_output=True,
                                text=True)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pip install 'tracewheel[{extra}]'" in lines[0], lines
    # Their help needs no extra.
    for tool in ("rollout", "train"):
        assert subprocess.run([str(bin_ / tool), "--help"], capture_output=True).returncode == 0
