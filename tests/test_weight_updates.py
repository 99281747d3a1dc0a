"""New weights into a running vLLM server (CPU build, the embedded model), without a restart."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import openai
import pytest
import torch

from tracewheel.errors import TracewheelError
from tracewheel.vllm import VLLMServer
from tracewheel.weight_updates import load_weights, weight_version

from conftest import local_logprobs, served_greedy

pytestmark = pytest.mark.vllm

MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm-updates") / "vllm.log"
    with VLLMServer("smollm2-135m", served_model_name="policy", log_file=log,
                    weight_updates=True) as server:
        yield server


@pytest.fixture(scope="module")
def changed_model(tmp_path_factory, embedded_model_dir):
    """The embedded model with every weight matrix nudged: same shapes, other answers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("changed") / "ckpt"
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=generator) * p.std() * 0.3)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(embedded_model_dir).save_pretrained(out)
    return out


def greedy(server: VLLMServer) -> tuple[list[int], list[int], torch.Tensor]:
    prompt, completion, logprobs = served_greedy(server, "policy", MESSAGES)
    return prompt, completion, torch.tensor(logprobs)


def test_loaded_weights_answer_and_the_old_ones_come_back(server, changed_model,
                                                          embedded_model_dir):
    prompt, before, _ = greedy(server)
    seconds = server.load_weights(changed_model, version="v2")
    assert 0 < seconds < 120
    assert weight_version(server.base_url) == "v2"
    prompt_after, after, served = greedy(server)
    assert prompt_after == prompt and after != before
    # What answers is the checkpoint itself: its logprobs in transformers, not the old model's.
    assert torch.allclose(served, local_logprobs(changed_model, prompt, after), atol=0.05)
    assert not torch.allclose(served, local_logprobs(embedded_model_dir, prompt, after),
                              atol=0.5)

    # Back to the first weights, by the command line: the first answer again (no stale cache).
    done = subprocess.run(
        [sys.executable, "-m", "tracewheel.vllm", str(embedded_model_dir), "--load-into",
         server.url, "--weight-version", "v1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "weights of" in done.stderr and "loaded in" in done.stderr
    assert greedy(server)[1] == before
    assert weight_version(server.url) == "v1"


def test_calls_during_an_update_are_marked_with_the_weights_that_answered_them(
        server, changed_model, embedded_model_dir):
    """Calls through the recorder while new weights come in: each call is marked with the
    version whose greedy answer it got (in flight, it finished on the old weights, or was
    asked again on the new ones)."""
    from concurrent.futures import ThreadPoolExecutor

    from tracewheel_rollout.recorder import Recorder

    start = weight_version(server.url)
    old = served_greedy(server, "policy", MESSAGES, 16)[1]
    calls: list[dict] = []
    with Recorder(server.base_url, on_call=calls.append, weight_version=start,
                  continuation="off") as rec:
        client = openai.OpenAI(base_url=rec.base_url(), api_key="EMPTY", max_retries=0)

        def ask(_: int = 0) -> None:
            client.chat.completions.create(model="policy", messages=MESSAGES, max_tokens=16,
                                           temperature=0.0)

        ask()
        with ThreadPoolExecutor(2) as pool:
            asked = [pool.submit(ask, i) for i in range(6)]
            server.load_weights(changed_model, version="v3")
            for future in asked:
                future.result()
        ask()
    new = served_greedy(server, "policy", MESSAGES, 16)[1]
    server.load_weights(embedded_model_dir, version=start)  # as the other tests expect it
    assert old[:4] != new[:4]
    answers = {start: old[:4], "v3": new[:4]}
    assert [c["status"] for c in calls] == ["ok"] * 8
    assert calls[0]["weight_version"] == start and calls[-1]["weight_version"] == "v3"
    for call in calls:
        assert call["completion_ids"][:4] == answers[call["weight_version"]], call


def test_other_shapes_are_refused_and_the_server_keeps_its_weights(server, tmp_path,
                                                                   embedded_model_dir):
    _, before, _ = greedy(server)
    version = weight_version(server.url)
    other = tmp_path / "other"
    shutil.copytree(embedded_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["num_hidden_layers"] = 2
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(TracewheelError, match="num_hidden_layers is 2 where the served model"):
        load_weights(server.url, other)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((embedded_model_dir / "config.json").read_text())
    with pytest.raises(TracewheelError, match="no \\*.safetensors weights to load"):
        load_weights(server.url, empty)

    cut = tmp_path / "cut"
    shutil.copytree(embedded_model_dir, cut)
    weights = next(cut.glob("*.safetensors"))
    os.truncate(weights, weights.stat().st_size // 2)  # a copy that did not finish
    with pytest.raises(TracewheelError, match="safetensors: cut short"):
        load_weights(server.url, cut)

    assert weight_version(server.url) == version
    assert greedy(server)[1] == before


def test_a_load_that_fails_part_way_puts_the_previous_weights_back(server, changed_model,
                                                                   tmp_path):
    """A checkpoint whose last tensor has the wrong shape passes every check before the load,
    and fails inside vLLM after the tensors before it were replaced."""
    from safetensors.torch import load_file, save_file

    _, before, _ = greedy(server)
    version = weight_version(server.url)
    bad = tmp_path / "bad"
    shutil.copytree(changed_model, bad)
    weights = next(bad.glob("*.safetensors"))
    tensors = load_file(weights)
    last = sorted(tensors)[-1]
    tensors[last] = torch.zeros(tensors[last].shape[0] + 1)
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(TracewheelError, match=r"failed part way \(Attempted to load weight .*"
                                              r"\); the weights that served before are back "
                                              r"and serve again \(version v1\)"):
        load_weights(server.url, bad, version="bad")
    assert weight_version(server.url) == version
    assert greedy(server)[1] == before


def test_a_server_that_stops_answering_fails_the_update_within_its_timeout(embedded_model_dir):
    with socket.socket() as silent:  # takes connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(TracewheelError, match=f"vLLM at {url}: .* failed: timed out"):
            load_weights(url, embedded_model_dir, timeout=2)
        assert time.monotonic() - started < 30


def test_a_server_without_weight_updates_is_told_apart_and_left_serving(vllm_server,
                                                                          embedded_model_dir):
    with pytest.raises(TracewheelError, match="HTTP 404.*start it with weight updates"):
        load_weights(vllm_server.url, embedded_model_dir)
    client = openai.OpenAI(base_url=vllm_server.base_url, api_key="EMPTY", max_retries=0)
    resp = client.chat.completions.create(model="smollm2-135m", messages=MESSAGES,
                                          max_tokens=4, temperature=0.0)
    assert resp.choices[0].message.content
