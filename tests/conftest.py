"""Shared fixtures: the embedded model, and one real vLLM server for the whole session."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tracewheel.models import EMBEDDED_MODEL, resolve_model
from tracewheel.vllm import VLLMServer

JSONL_TOOLS = {  # tools that read JSONL, and the record kind they read
    "trace-filter": "task",
    "task-augment": "task",
    "rollout": "task",
    "ctx-merge": "rollout",
    "train": "sample",
}
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_WORKFLOW = f"{ROOT / 'examples' / 'math_agent.py'}:run"
LEGACY_DB = ROOT / "tests" / "fixtures" / "studio" / "studio-1.0.5_agentscope-1.0.7.sqlite"
REQUIRED_ARGS = {  # what a tool needs besides its input to get as far as reading it
    "rollout": ["--workflow", EXAMPLE_WORKFLOW],
}


@pytest.fixture(scope="session")
def embedded_model_dir():
    """The embedded SmolLM2 as a model directory (converted once, then cached)."""
    return resolve_model(EMBEDDED_MODEL)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory, embedded_model_dir):
    """A real vLLM server (CPU build here) with the embedded model, shared by every test:
    it takes 30-60 s to start. `make test` installs it; without it these tests fail, loudly."""
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with VLLMServer(EMBEDDED_MODEL, log_file=log) as server:
        yield server


@pytest.fixture(scope="session")
def tokenizer(embedded_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir)


def studio_tasks(n: int) -> str:
    """JSONL of n real tasks from a Studio database, the manifest's answers as references."""
    out = subprocess.run([str(Path(sys.executable).parent / "trace-export"), "-q",
                          str(LEGACY_DB), "--status", "ok"],
                         capture_output=True, text=True, check=True).stdout
    manifest = json.loads(LEGACY_DB.with_suffix(".manifest.json").read_text())
    answers = {t["input"].get("text"): t["expected_answer"] for r in manifest["runs"]
               for t in r["turns"] if t["input"]["kind"] == "user"}
    chosen = []
    for line in out.splitlines():
        task = json.loads(line)
        if answers.get(task["query"]) and len(task["messages"]) == 2:
            chosen.append({**task, "reference": answers[task["query"]]})
        if len(chosen) == n:
            break
    return "".join(json.dumps(task) + "\n" for task in chosen)
