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


def load_script(relative: str):
    """A script of the repository (examples/, scripts/, bench/) as a module, by its path under
    ROOT; registered in sys.modules under its file name, where its dataclasses look it up."""
    import importlib.util

    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, for a server a test starts."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@pytest.fixture
def no_vllm_here(tmp_path, monkeypatch):
    """A tools' environment with no vLLM in it, outside any checkout, with an empty PATH."""
    import tracewheel.vllm as launcher

    monkeypatch.delenv("TRACEWHEEL_VLLM_PYTHON", raising=False)
    monkeypatch.setattr(launcher, "PROJECT_ROOT", tmp_path / "site-packages")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    (tmp_path / "bin").mkdir()
    return tmp_path


@pytest.fixture(scope="session")
def tokenizer(embedded_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir)


def served_greedy(server: VLLMServer, model: str, messages: list[dict], max_tokens: int = 8
                  ) -> tuple[list[int], list[int], list[float]]:
    """A greedy completion from a real server: its prompt ids, completion ids, and the logprob
    of each completion token."""
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
    resp = client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0.0, logprobs=True,
        extra_body={"return_token_ids": True})
    return (resp.model_extra["prompt_token_ids"], resp.choices[0].model_extra["token_ids"],
            [t.logprob for t in resp.choices[0].logprobs.content])


def local_logprobs(model, prompt_ids: list[int], completion_ids: list[int]):
    """log p of each completion token under ``model`` in transformers (a model, or a model
    directory loaded in float32): what a served model's logprobs are checked against."""
    import torch

    if isinstance(model, (str, Path)):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1]
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion_ids)[:, None])[:, 0]


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
