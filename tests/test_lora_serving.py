"""One base model, one LoRA adapter per policy, loaded and replaced in a running vLLM (CPU build):
what multi-agent workflows need to give each agent its own policy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tracewheel.errors import TracewheelError
from tracewheel.vllm import VLLMServer
from tracewheel.weight_updates import load_adapter

from conftest import free_port, local_logprobs, served_greedy

pytestmark = pytest.mark.vllm

MESSAGES = [{"role": "user", "content": "Name a colour."}]
RANK = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm-lora") / "vllm.log"
    with VLLMServer("smollm2-135m", served_model_name="base", log_file=log,
                    lora_rank=RANK) as server:
        yield server


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, embedded_model_dir):
    """Three adapters of the embedded model with random, non-zero weights (a fresh LoRA adapter
    changes nothing), and one of a rank over the server's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    made = {}
    for k, (name, rank) in enumerate([("a", RANK), ("b", RANK), ("c", RANK), ("wide", 16)]):
        base = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
        model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank,
                                                target_modules=["q_proj", "v_proj", "down_proj"]))
        generator = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
        model.save_pretrained(root / name)
        made[name] = root / name
    return made


def greedy(server: VLLMServer, model: str) -> tuple[list[int], list[int], torch.Tensor]:
    prompt, completion, logprobs = served_greedy(server, model, MESSAGES)
    return prompt, completion, torch.tensor(logprobs)


def adapter_logprobs(base_dir, adapter, prompt_ids: list[int], completion_ids: list[int]
                     ) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return local_logprobs(PeftModel.from_pretrained(base, adapter).eval(), prompt_ids,
                          completion_ids)


def test_each_policy_answers_with_its_adapter_and_a_new_one_replaces_only_its_own(
        server, adapters, embedded_model_dir):
    _, base, _ = greedy(server, "base")
    server.load_adapter("solver", adapters["a"])
    server.load_adapter("checker", adapters["b"])
    prompt, solver, served = greedy(server, "solver")
    _, checker, _ = greedy(server, "checker")
    assert solver != base and checker != base and solver != checker
    # What answers as "solver" is its adapter on the base, as peft computes it.
    assert torch.allclose(served, adapter_logprobs(embedded_model_dir, adapters["a"], prompt,
                                                   solver), atol=0.05)

    # A new version of the solver's adapter, by the command line: the solver's answer changes,
    # the checker's and the base's do not.
    done = subprocess.run(
        [sys.executable, "-m", "tracewheel.vllm", str(adapters["c"]), "--load-into",
         server.url, "--adapter", "solver"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    prompt, solver_2, served_2 = greedy(server, "solver")
    assert solver_2 != solver
    assert torch.allclose(served_2, adapter_logprobs(embedded_model_dir, adapters["c"], prompt,
                                                     solver_2), atol=0.05)
    assert greedy(server, "checker")[1] == checker
    assert greedy(server, "base")[1] == base


def test_an_adapter_vllm_refuses_leaves_the_policy_on_its_previous_one(server, adapters,
                                                                      tmp_path):
    server.load_adapter("critic", adapters["b"])
    _, before, _ = greedy(server, "critic")
    with pytest.raises(TracewheelError, match="loading adapter 'critic' \\(rank 16\\)"):
        load_adapter(server.url, "critic", adapters["wide"])
    assert greedy(server, "critic")[1] == before

    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(TracewheelError, match="not a LoRA adapter \\(no adapter_config.json\\)"):
        load_adapter(server.url, "critic", tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8}) + "}")
    with pytest.raises(TracewheelError, match="adapter_config.json: not JSON"):
        load_adapter(server.url, "critic", tmp_path)
    assert greedy(server, "critic")[1] == before

    # A broken adapter: its weights cut short on disk (a copy that did not finish).
    broken = tmp_path / "broken"
    shutil.copytree(adapters["c"], broken)
    weights = broken / "adapter_model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    with pytest.raises(TracewheelError, match="adapter_model.safetensors: cut short"):
        load_adapter(server.url, "critic", broken)
    assert greedy(server, "critic")[1] == before
    # The loop loads each adapter with the launcher, and stops where it fails: status 1.
    loaded = subprocess.run(
        [sys.executable, "-m", "tracewheel.vllm", str(broken), "--load-into", server.base_url,
         "--adapter", "critic"], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 1 and "cut short" in loaded.stderr, loaded.stderr
    assert greedy(server, "critic")[1] == before


def test_two_agents_train_and_serve_each_on_its_own_adapter(server, adapters, tmp_path):
    """A two-agent workflow end to end on one base: its rollouts merge into samples per agent;
    train writes one adapter per policy; a new adapter loaded into the running server changes
    its agent's answers and not the other's; the next rollouts record each agent on its own."""
    from click.testing import CliRunner

    from tracewheel_ctx_merge.cli import main as ctx_merge
    from tracewheel_rollout.cli import main as rollout
    from tracewheel_train.cli import main as train

    from conftest import ROOT

    server.load_adapter("solver", adapters["a"])
    server.load_adapter("checker", adapters["b"])
    tasks = "".join(json.dumps({"id": f"t{i}", "query": f"What is {i} + {i}?"}) + "\n"
                    for i in range(3))
    workflow = f"{ROOT / 'tests' / 'fixtures' / 'rollout' / 'workflows.py'}:two_agents"
    policy = ["--policy", "Solver=solver,Checker=checker"]

    def roll(out, policy=policy, said=""):
        result = CliRunner().invoke(rollout, [
            "-w", workflow, "-n", "2", "--temperature", "0", "--base-url", server.base_url,
            "--model", "base", *policy, "-o", str(out)], input=tasks)
        assert result.exit_code == 0, result.output
        assert said in result.output
        return [json.loads(line) for line in out.read_text().splitlines()]

    first = roll(tmp_path / "rollouts.jsonl")
    calls = [c for r in first for c in r["calls"]]
    assert {(c["agent"], c["policy"], c["model"]) for c in calls} == {
        ("Solver", "solver", "solver"), ("Checker", "checker", "checker")}
    assert {c["policy_version"] for c in calls if c["agent"] == "Solver"} == {
        str(adapters["a"].resolve())}

    samples = tmp_path / "samples.jsonl"
    result = CliRunner().invoke(ctx_merge, [str(tmp_path / "rollouts.jsonl"), "-o",
                                            str(samples)])
    assert result.exit_code == 0, result.output
    merged = [json.loads(line) for line in samples.read_text().splitlines()]
    assert {s["agent"] for s in merged} == {"Solver", "Checker"}

    out = tmp_path / "adapters"
    result = CliRunner().invoke(train, [*policy, "--lora-r", str(RANK), "--lr", "5e-3",
                                        "--epochs", "4", "--out", str(out), str(samples)])
    assert result.exit_code == 0, result.output
    assert sorted(json.loads((out / "policies.json").read_text())["policies"]) == [
        "checker", "solver"]

    _, solver_before, _ = greedy(server, "solver")
    _, checker_before, _ = greedy(server, "checker")
    load_adapter(server.url, "solver", out / "solver")
    prompt, solver_after, served = greedy(server, "solver")
    assert solver_after != solver_before
    assert torch.allclose(served, adapter_logprobs(server.model_dir, out / "solver", prompt,
                                                   solver_after), atol=0.05)
    assert greedy(server, "checker")[1] == checker_before

    # A map entry for an agent the workflow does not have (a misspelt name) is said, once.
    again = roll(tmp_path / "rollouts-2.jsonl",
                 ["--policy", "Solver=solver,Checker=checker,Critc=checker"],
                 "WARNING: the policy map names agents that made no call: Critc")
    versions = {(c["agent"], c["policy_version"]) for r in again for c in r["calls"]}
    assert versions == {("Solver", str((out / "solver").resolve())),
                        ("Checker", str(adapters["b"].resolve()))}


def test_the_gateway_promotes_a_candidate_adapter_and_rolls_back(server, adapters, tmp_path):
    """rollout gateway --live base in front of the adapter server: a candidate loaded under its
    own name answers users only once promoted, then exactly as it answers directly; a name
    the server does not serve is refused and the live model stays; a rollback is one call."""
    import httpx
    import openai

    server.load_adapter("candidate", adapters["b"])
    port = free_port()
    proc = subprocess.Popen([shutil.which("rollout", path=os.path.dirname(sys.executable)),
                             "gateway", "--upstream", server.base_url, "--port", str(port),
                             "--live", "base", "-o", str(tmp_path / "sessions.jsonl")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=f"{root}/v1", api_key="EMPTY", max_retries=0)

    def ask(session: str) -> str:
        reply = client.chat.completions.create(
            model="whatever-the-client-names", messages=MESSAGES, max_tokens=8, temperature=0,
            extra_headers={"X-Session-Id": session, "X-Session-Done": "1"})
        return reply.choices[0].message.content

    try:
        assert "serving at" in proc.stderr.readline()
        direct = {m: served_greedy(server, m, MESSAGES)[1] for m in ("base", "candidate")}
        assert direct["base"] != direct["candidate"]
        before = ask("before")
        refused = httpx.post(f"{root}/rl/promote", json={"model": "not-loaded"}, timeout=30)
        assert refused.status_code == 404 and "stays 'base'" in refused.text
        assert httpx.post(f"{root}/rl/promote", json={"model": "candidate"},
                          timeout=30).is_success
        promoted = ask("promoted")
        httpx.post(f"{root}/rl/promote", json={"model": "base"}, timeout=30)
        rolled_back = ask("rolled-back")
    finally:
        proc.send_signal(2)
        _, err = proc.communicate(timeout=30)
    records = {json.loads(line)["id"]: json.loads(line)
               for line in (tmp_path / "sessions.jsonl").read_text().splitlines()}
    answered = {sid: r["calls"][0] for sid, r in records.items()}
    assert {sid: c["policy"] for sid, c in answered.items()} == {
        "before": "base", "promoted": "candidate", "rolled-back": "base"}
    assert answered["promoted"]["completion_ids"] == direct["candidate"]
    assert answered["before"]["completion_ids"] == direct["base"]
    assert answered["rolled-back"]["completion_ids"] == direct["base"]
    assert promoted != before == rolled_back
    assert proc.returncode == 0, err
