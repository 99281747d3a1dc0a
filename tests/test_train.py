"""train: SFT and GRPO on the embedded model, through the real command line.

Samples are real ChatML conversations tokenized with the embedded model's tokenizer; GRPO's
sampler logprobs are the model's own, so the importance ratio starts at exactly 1. Every run is
a few optimizer steps on sequences of ~45 tokens: each costs a few seconds on two CPU cores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tracewheel_train.cli import main as train
from tracewheel_train.config import TrainConfig
from tracewheel_train.data import (
    TrainSample,
    collate,
    group_advantages,
    pack,
    plan_steps,
    spread,
    token_weights,
)
from tracewheel_train.losses import grpo_loss

# (group, answer, reward): two right and two wrong answers to each of two questions.
ANSWERS = [
    ("What is 2+2?", "2 + 2 = 4.", 1.0),
    ("What is 2+2?", "I think it is 5.", 0.0),
    ("What is 3+3?", "3 + 3 = 6.", 1.0),
    ("What is 3+3?", "It is 7, maybe.", 0.0),
]
TIMING = {"tokens_per_s", "step_s"}
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def sample_record(tokenizer, i: int, question: str, answer: str, reward: float) -> dict:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                           tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
    n = len(prompt_ids) + len(completion)
    return {"id": f"s{i}", "rollout_id": f"r{i}", "task_id": question, "group": question,
            "agent": "MathAgent", "input_ids": prompt_ids + completion,
            "loss_mask": [0] * len(prompt_ids) + [1] * len(completion),
            "logprobs": [0.0] * n, "reward": reward, "calls": {"count": 1}}


def completion_logprobs(model, record: dict) -> torch.Tensor:
    """log p of each trained token of ``record`` under ``model``, one sample alone."""
    ids = torch.tensor([record["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
    return logp[torch.tensor(record["loss_mask"][1:]).bool()]


@pytest.fixture(scope="session")
def base_model(embedded_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def records(tokenizer, base_model) -> list[dict]:
    """The four samples, with the embedded model's own logprobs as the sampler's."""
    out = []
    for i, (question, answer, reward) in enumerate(ANSWERS):
        record = sample_record(tokenizer, i, question, answer, reward)
        logp = iter(completion_logprobs(base_model, record).tolist())
        record["logprobs"] = [0.0] + [next(logp) if m else 0.0 for m in record["loss_mask"][1:]]
        out.append(record)
    return out


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def run(args: list[str], records: list[dict] | str, exit_code: int = 0):
    """The train command on ``records``; its metrics lines, and the result."""
    text = records if isinstance(records, str) else jsonl(records)
    result = CliRunner().invoke(train, args, input=text)
    assert result.exit_code == exit_code, result.output
    metrics = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return metrics, result


def without_timing(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


# ---- training behaviour ----------------------------------------------------------------------

def test_train_sft_loss_falls_on_a_small_set(records, tmp_path):
    """Three epochs over the four samples, one step each: the loss falls step after step."""
    metrics, result = run(["--out", str(tmp_path / "ckpt"), "--epochs", "3", "--lr", "1e-4"],
                          records)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    losses = [m["loss"] for m in metrics]
    assert losses[0] > losses[1] > losses[2], losses
    assert losses[2] < 0.7 * losses[0], losses
    first = metrics[0]
    assert first["samples"] == 4 and first["padding_frac"] == 0.0
    assert first["trained_tokens"] == sum(sum(r["loss_mask"][1:]) for r in records)
    assert first["tokens"] == sum(len(r["input_ids"]) for r in records)
    assert first["lr"] == 1e-4 and first["grad_norm"] > 0 and first["tokens_per_s"] > 0
    assert "train: 4 read, 4 trained, 0 invalid, 3 steps" in result.stderr


@pytest.mark.parametrize("variant", [
    [],  # DAPO's token mean, std-normalised advantages
    ["--loss-norm", "constant", "--norm-tokens", "16", "--adv-norm", "mean"],  # Dr. GRPO
], ids=["grpo", "dr-grpo"])
def test_train_grpo_step_raises_positive_and_lowers_negative_completions(
        records, base_model, tmp_path, variant):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ckpt"
    # float32: the trainer computes what the (float32) sampler did, to the last digit.
    metrics, _ = run(["--algo", "grpo", "--out", str(out), "--lr", "1e-6",
                      "--mixed-precision", "fp32", *variant], records)
    (step,) = metrics
    assert step["reward_mean"] == 0.5 and step["clip_frac"] == 0.0
    # The sampler's logprobs are the model's own: the ratio is 1, the policies agree.
    assert step["kl_old"] == pytest.approx(0.0, abs=1e-6)
    trained = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    for record in records:
        before = completion_logprobs(base_model, record).sum()
        after = completion_logprobs(trained, record).sum()
        if record["reward"] > 0.5:
            assert after > before, record["id"]
        else:
            assert after < before, record["id"]


def test_bf16_grpo_sees_the_float32_sampler_a_little_apart(records, tmp_path):
    """Under bf16 autocast (auto on a CPU with native bf16) the first step's ratio holds the
    trainer's gap to the float32 sampler: small beside the clip range, never zero."""
    (step,), _ = run(["--algo", "grpo", "--out", str(tmp_path / "ckpt"), "--lr", "1e-6",
                      "--mixed-precision", "bf16"], records)
    assert 0 < step["kl_old"] < 1e-2
    assert step["clip_frac"] < 0.05


def test_train_writes_every_metric_and_chains_iterations_through_model_dirs(records, tmp_path):
    """The flywheel's loop: iteration 2 starts from iteration 1's model directory (and may
    replace it in place); every step writes every metric key."""
    from tracewheel_train.trainer import METRIC_KEYS

    first, second = tmp_path / "iter-1", tmp_path / "iter-2"
    args = ["--algo", "grpo", "--max-steps", "1", "--lr", "1e-5"]
    (step,), _ = run([*args, "--out", str(first)], records)
    assert list(step) == list(METRIC_KEYS)
    assert step["padding_frac"] == 0.0 and step["reward_std"] == 0.5
    (step,), result = run([*args, "--model", str(first), "--out", str(second)], records)
    assert json.loads((second / "tracewheel_train.json").read_text())["base_model"] == str(first)
    assert step["kl_old"] > 0  # the sampler's logprobs are the base model's, not iteration 1's
    run([*args, "--model", str(second), "--out", str(second)], records)
    assert (second / "model.safetensors").is_file() and not list(tmp_path.glob(".iter-2.*"))


def test_a_failed_write_leaves_no_model_dir_under_the_final_name(tmp_path):
    from tracewheel_train.checkpoint import atomic_dir

    final = tmp_path / "ckpt"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "config.json").write_text("{}")
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        raise RuntimeError("crash while replacing")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # the older model is kept
    assert (final / "config.json").read_text() == "{}"


def test_train_grpo_skips_and_counts_groups_with_equal_rewards(records):
    same = [dict(r, group="same", reward=1.0, id=f"x{i}", rollout_id=f"rx{i}")
            for i, r in enumerate(records[:2])]
    _, result = run(["--algo", "grpo", "--dry-run"], records[:2] + same)
    assert "plan: 2 samples" in result.stderr
    assert "4 read, 2 trained, 2 skipped (2 equal rewards in group)" in result.stderr
    assert "2 groups (1 with equal rewards skipped)" in result.stderr

    _, result = run(["--algo", "grpo", "--dry-run"], same, exit_code=1)
    assert "no samples to train on (every group had equal rewards" in result.output
    assert "--allow-empty" in result.output

    # Ungraded rollouts (reward null: a task without a reference) are skipped and counted.
    ungraded = [dict(r, reward=None, id=f"u{i}", rollout_id=f"ru{i}")
                for i, r in enumerate(records[:2])]
    _, result = run(["--algo", "grpo", "--dry-run"], records + ungraded)
    assert "6 read, 4 trained, 2 skipped (2 no reward)" in result.stderr


def test_train_sft_min_reward_learns_only_the_rollouts_that_reached_it(records):
    """Rejection sampling: --min-reward 1 keeps the right rollouts; wrong and ungraded ones are
    counted, not imitated."""
    graded = [dict(r, reward=float(i % 2), id=f"g{i}", rollout_id=f"rg{i}")
              for i, r in enumerate(records)]
    ungraded = dict(records[0], reward=None, id="u0", rollout_id="ru0")
    _, result = run(["--algo", "sft", "--min-reward", "1", "--dry-run"], graded + [ungraded])
    right = sum(r["reward"] == 1.0 for r in graded)
    assert f"plan: {right} samples" in result.stderr
    assert (f"{len(graded) + 1} read, {right} trained, {len(graded) + 1 - right} skipped "
            f"({len(graded) + 1 - right} reward below --min-reward)") in result.stderr


def test_train_max_lag_leaves_out_samples_of_older_weights_and_counts_them(records):
    """The flywheel's ASYNC=1: samples say which weights sampled them (a number, or numbers
    where the weights changed between a sample's calls: the oldest counts)."""
    versions = ["3", "2", "1", ["1", "3"]]
    versioned = [dict(r, weight_version=v, reward=1.0, id=f"v{i}", rollout_id=f"rv{i}")
                 for i, (r, v) in enumerate(zip(records, versions, strict=True))]
    _, result = run(["--algo", "sft", "--policy-version", "3", "--max-lag", "1", "--dry-run"],
                    versioned)
    assert "4 read, 2 trained, 2 skipped (2 older than --max-lag)" in result.stderr
    assert "versions behind: 0: 1, 1: 1" in result.stderr

    # A sample without a version cannot be placed: an error naming its line.
    unversioned = [dict(versioned[0]), dict(versioned[1], weight_version=None)]
    _, result = run(["--algo", "sft", "--policy-version", "3", "--max-lag", "1", "--dry-run"],
                    unversioned, exit_code=1)
    assert "<stdin>:2: weight_version None is not a version number" in result.output
    _, result = run(["--algo", "sft", "--max-lag", "1", "--dry-run"], versioned, exit_code=2)
    assert "--max-lag and --policy-version go together" in result.output


def test_train_one_adapter_per_policy_each_on_its_own_agents(records, tmp_path):
    """Multi-agent: the samples of Solver train the solver adapter, Checker's the checker's;
    the next iteration starts each from its own."""
    two = [dict(r, agent="Solver" if i % 2 == 0 else "Checker") for i, r in enumerate(records)]
    out = tmp_path / "adapters"
    args = ["--policy", "Solver=solver,Checker=checker", "--lora-r", "4", "--lr", "1e-3"]
    metrics, result = run([*args, "--out", str(out)], two)
    assert "policy checker (Checker): 2 samples" in result.stderr
    assert "policy solver (Solver): 2 samples" in result.stderr
    assert sorted(m["policy"] for m in metrics) == ["checker", "solver"]
    manifest = json.loads((out / "policies.json").read_text())
    assert {n: p["agents"] for n, p in manifest["policies"].items()} == {
        "checker": ["Checker"], "solver": ["Solver"]}
    adapters = {n: (out / n / "adapter_model.safetensors").read_bytes() for n in ("solver",
                                                                                 "checker")}
    assert adapters["solver"] != adapters["checker"]
    assert json.loads((out / "solver" / "adapter_config.json").read_text())["r"] == 4

    again = tmp_path / "adapters-2"
    _, result = run([*args, "--out", str(again), "--init-adapters", str(out)], two)
    assert f"from {out / 'solver'}" in result.stderr
    # every policy at one rank: an earlier adapter of another is refused
    _, result = run(["--policy", "Solver=solver,Checker=checker", "--lora-r", "8", "--out",
                     str(tmp_path / "wide"), "--init-adapters", str(out)], two, exit_code=1)
    assert "an adapter of rank 4, where --lora-r is 8" in result.output
    assert not (tmp_path / "wide" / "policies.json").exists()


def test_train_agents_of_one_rollout_may_have_rewards_of_their_own(records):
    """A multi-agent workflow's agent_rewards: the samples of one rollout differ in reward by
    agent (not an error), and GRPO compares each agent's within its policy."""
    one = [dict(r, rollout_id=f"r{i // 2}", group="g", agent="Solver" if i % 2 else "Checker",
                reward=float(i % 2 == 0 or i == 3),
                agent_rewards={"Solver": float(i == 3), "Checker": 1.0 - (i == 2)})
           for i, r in enumerate(records)]
    for r in one:
        r["reward"] = r["agent_rewards"][r["agent"]]
    _, result = run(["--algo", "grpo", "--policy", "Solver=solver,Checker=checker",
                     "--lora-r", "4", "--dry-run"], one)
    assert "4 read, 4 trained" in result.stderr, result.stderr


def test_train_policy_map_errors_name_the_agent_and_the_line(records):
    two = [dict(r, agent="Solver" if i < 3 else "Critic") for i, r in enumerate(records)]
    base = ["--policy", "Solver=solver", "--lora-r", "4", "--dry-run"]
    _, result = run(base, two, exit_code=1)
    assert "<stdin>:4: agent 'Critic' is not in the policy map (it names Solver)" in result.output
    _, result = run([*base, "--default-policy", "base"], two)
    assert "1 skipped (1 agent served by base (not trained))" in result.stderr
    _, result = run(["--policy", "Solver=solver", "--dry-run"], two, exit_code=2)
    assert "--policy trains one LoRA adapter per policy: give --lora-r" in result.output
    _, result = run(["--policy", "Solver", "--lora-r", "4", "--dry-run"], two, exit_code=2)
    assert "'Solver': not AGENT=POLICY" in result.output
    _, result = run(["--default-policy", "base", "--dry-run"], two, exit_code=2)
    assert "--default-policy needs --policy" in result.output


def test_train_allow_empty_writes_the_starting_model_unchanged(records, embedded_model_dir,
                                                               tmp_path):
    same = [dict(r, reward=0.0) for r in records]
    out = tmp_path / "ckpt"
    metrics, result = run(["--algo", "grpo", "--allow-empty", "--out", str(out)], same)
    assert metrics == []
    assert "model in" in result.stderr and "unchanged" in result.stderr
    base = Path(embedded_model_dir)
    assert (out / "model.safetensors").read_bytes() == (base / "model.safetensors").read_bytes()
    assert json.loads((out / "tracewheel_train.json").read_text())["steps"] == 0


def test_train_grpo_with_lora_kl_and_recomputed_logprobs_saves_merged_weights(
        records, base_model, tmp_path):
    """LoRA's reference is the model with its adapter off; the merged model is a plain one."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ckpt"
    metrics, _ = run(["--algo", "grpo", "--out", str(out), "--lora-r", "4", "--lr", "1e-3",
                      "--kl-coef", "0.1", "--recompute-logprobs", "--max-tokens-per-batch",
                      "100", "--grad-accum", "2"], records)
    (step,) = metrics
    assert step["kl"] == pytest.approx(0.0, abs=1e-6)  # the adapter starts as a no-op
    assert step["samples"] == 4
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not any("lora" in k for k in merged.state_dict())
    changed = [k for k, v in merged.state_dict().items()
               if not torch.equal(v, base_model.state_dict()[k])]
    assert changed and all("proj" in k for k in changed)


def test_train_save_adapter_writes_the_lora_adapter(records, tmp_path):
    out = tmp_path / "adapter"
    run(["--out", str(out), "--lora-r", "4", "--save-adapter", "--max-steps", "1"], records)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()


def test_train_same_seed_gives_identical_metrics(records, tmp_path):
    args = ["--algo", "grpo", "--lora-r", "4", "--lr", "1e-3", "--max-tokens-per-batch", "60",
            "--max-steps", "2", "--seed", "7"]
    first, _ = run(args + ["--out", str(tmp_path / "a")], records)
    second, _ = run(args + ["--out", str(tmp_path / "b")], records)
    assert len(first) == 2
    assert without_timing(first) == without_timing(second)


def test_train_resume_continues_where_it_stopped(records, tmp_path):
    """Two steps with a checkpoint after the first; resuming from it gives the same step 2."""
    out = tmp_path / "ckpt"
    args = ["--out", str(out), "--max-tokens-per-batch", "60", "--max-steps", "2",
            "--save-every", "1", "--lr", "1e-4"]
    straight, _ = run(args, records)
    assert [p.name for p in (tmp_path / "ckpt.steps").iterdir() if p.name.startswith("step")] \
        == ["step-000001"]
    resumed, result = run(args + ["--resume"], records)
    assert "resumed from" in result.stderr and "after step 1" in result.stderr
    assert [m["step"] for m in resumed] == [2]
    assert without_timing(resumed) == without_timing(straight[1:])

    _, result = run(args + ["--resume", "--seed", "3"], records, exit_code=1)
    assert "the run's options differ: --seed 0 then, 3 now" in result.output
    _, result = run(args + ["--resume"], records[:3], exit_code=1)
    assert "the checkpoint was trained on other samples" in result.output


def test_packed_row_gives_each_sample_the_logits_it_has_alone(records, embedded_model_dir):
    """No attention across packed samples: the packed row's logits equal each sample's own."""
    from transformers import AutoModelForCausalLM

    from tracewheel_train import attention
    from tracewheel_train.data import to_train_sample

    attention.register()
    samples = [to_train_sample(r, 1, TrainConfig())[0] for r in records[:3]]
    batch = collate(samples, [1.0] * 3)
    for impl in ("varlen_sdpa", "sdpa"):
        model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32,
                                                     attn_implementation=impl).eval()
        with torch.no_grad():
            packed = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                           cu_seq_lens_q=batch.cu_seq_lens, cu_seq_lens_k=batch.cu_seq_lens,
                           max_length_q=batch.max_len, max_length_k=batch.max_len,
                           use_cache=False).logits[0]
            alone = torch.cat([model(input_ids=torch.tensor(s.input_ids[None]).long(),
                                     use_cache=False).logits[0] for s in samples])
            # The control: the same row without the sample boundaries attends across them.
            crossed = model(input_ids=batch.input_ids, use_cache=False).logits[0]
        assert (packed - alone).abs().max() < 1e-4, impl
        assert (crossed - alone).abs().max() > 1.0


def test_shared_prefix_row_gives_the_logprobs_and_gradients_of_samples_apart(
        tokenizer, embedded_model_dir):
    """An agent's calls all begin with its system prompt: the row holds it once, and each
    sample's logprobs and the gradients are still those of the samples packed apart."""
    from transformers import AutoModelForCausalLM

    from tracewheel_train import attention
    from tracewheel_train.data import to_train_sample
    from tracewheel_train.trainer import Trainer

    attention.register()
    system = ("You are a careful math assistant. Solve the problem step by step. Run Python "
              "with the tool and give the final answer in \\boxed{}, for example \\boxed{42}.")
    samples = []
    for i, (question, answer, reward) in enumerate(ANSWERS):
        record = sample_record(tokenizer, i, question, answer, reward)
        prompt = tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": question}],
            tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion = record["input_ids"][record["loss_mask"].index(1):]
        record.update(input_ids=prompt_ids + completion,
                      loss_mask=[0] * len(prompt_ids) + [1] * len(completion),
                      logprobs=[0.0] * (len(prompt_ids) + len(completion)))
        samples.append(to_train_sample(record, 1, TrainConfig())[0])
    apart = collate(samples, [1.0] * 4)
    shared = collate(samples, [1.0] * 4, share_prefix=True)
    assert shared.prefix >= 30  # the system prompt and more
    assert shared.input_ids.shape[1] == apart.input_ids.shape[1] - 3 * shared.prefix
    assert torch.equal(shared.targets, apart.targets)

    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32,
                                                 attn_implementation="varlen_sdpa")
    found = []
    for batch in (apart, shared):
        model.zero_grad()
        logp = Trainer._logprobs(model, batch)
        (logp * torch.linspace(0.5, 1.5, len(logp))).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        found.append((logp.detach(), grads))
    (logp_apart, grad_apart), (logp_shared, grad_shared) = found
    assert (logp_shared - logp_apart).abs().max() < 1e-4
    assert (grad_shared - grad_apart).norm() < 1e-4 * grad_apart.norm()
    # The control: a prefix of one sample only is not shared.
    assert collate(samples[:1], [1.0], share_prefix=True).prefix == 0


def test_train_goes_on_when_its_metrics_reader_goes_away(records, tmp_path):
    """`train ... | head -1`: one metrics line out, and still the whole run and the model."""
    data = tmp_path / "samples.jsonl"
    data.write_text(jsonl(records))
    exe = Path(sys.executable).parent / "train"
    proc = subprocess.run(
        f"'{exe}' --out '{tmp_path / 'ckpt'}' --max-tokens-per-batch 60 --max-steps 2 "
        f"'{data}' | head -1", shell=True, capture_output=True, text=True, timeout=600,
        executable="/bin/bash")
    assert json.loads(proc.stdout)["step"] == 1
    assert "Traceback" not in proc.stderr
    assert "2 steps, model in" in proc.stderr
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()


# ---- the checkpoint, served --------------------------------------------------------------------

@pytest.mark.vllm
@pytest.mark.slow
def test_train_checkpoint_loads_in_transformers_and_is_served_by_vllm(records, tmp_path):
    import openai
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tracewheel.vllm import VLLMServer

    out = tmp_path / "ckpt"
    run(["--out", str(out), "--max-steps", "1", "--lr", "1e-4"], records)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "tracewheel_train.json"):
        assert (out / name).is_file(), name
    assert oct((out / "model.safetensors").stat().st_mode & 0o044) == oct(0o044)
    assert not list(tmp_path.glob(".ckpt.*"))  # no temporary directory left behind
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert AutoTokenizer.from_pretrained(out).chat_template

    with VLLMServer(str(out), served_model_name="trained",
                    log_file=tmp_path / "vllm.log") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
        reply = client.chat.completions.create(
            model="trained", messages=[{"role": "user", "content": "What is 2+2?"}],
            max_tokens=8, temperature=0, logprobs=True, extra_body={"return_token_ids": True})
    choice = reply.choices[0]
    prompt_ids = reply.model_extra["prompt_token_ids"]
    completion_ids = choice.model_extra["token_ids"]
    served = [t.logprob for t in choice.logprobs.content]
    assert prompt_ids and completion_ids
    # The served weights are the trained ones: vLLM's logprobs match transformers' on them.
    record = {"input_ids": prompt_ids + completion_ids,
              "loss_mask": [0] * len(prompt_ids) + [1] * len(completion_ids)}
    ours = completion_logprobs(model, record).tolist()
    assert len(ours) == len(served)
    assert max(abs(a - b) for a, b in zip(ours, served, strict=True)) < 0.05


# ---- Ray Train and accelerate launch ---------------------------------------------------------

@pytest.mark.slow
def test_train_through_ray_train_locally_with_two_workers(records, tmp_path):
    out = tmp_path / "ckpt"
    metrics, result = run(["--ray", "--ray-workers", "2", "--out", str(out),
                           "--max-tokens-per-batch", "60", "--max-steps", "1"], records)
    (step,) = metrics
    assert step["samples"] == 2  # one micro-batch on each worker
    assert "Ray Train: 2 workers on CPUs" in result.stderr
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (tmp_path / "ckpt.steps").exists()  # Ray's own run files are gone


@pytest.mark.slow
def test_train_runs_as_two_processes_under_torchrun(records, tmp_path):
    """Two CPU processes, DDP over gloo, with the launcher `accelerate launch --multi_gpu` uses
    (its CPU mode needs MPI): the step equals one process accumulating both micro-batches."""
    data = tmp_path / "samples.jsonl"
    data.write_text(jsonl(records))
    args = ["--max-tokens-per-batch", "60", "--max-steps", "1", str(data)]
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2",
         "-m", "tracewheel_train", "--out", str(tmp_path / "two"), *args],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (two,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.stderr.count("train: 4 read") == 1  # the summary comes from one process
    assert (tmp_path / "two" / "model.safetensors").is_file()
    (one,), _ = run(["--out", str(tmp_path / "one"), "--grad-accum", "2", *args], "")
    assert two["samples"] == one["samples"] == 2
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)


@needs_gpu
def test_train_bf16_on_a_gpu(records, tmp_path):
    metrics, _ = run(["--out", str(tmp_path / "ckpt"), "--mixed-precision", "bf16",
                      "--max-steps", "1", "--gradient-checkpointing"], records)
    assert metrics[0]["loss"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_train_on_two_gpus_under_accelerate_launch(records, tmp_path):
    data = tmp_path / "samples.jsonl"
    data.write_text(jsonl(records))
    launcher = Path(sys.executable).parent / "accelerate"
    proc = subprocess.run(
        [str(launcher), "launch", "--num_processes", "2", "--mixed_precision", "bf16",
         "-m", "tracewheel_train", "--out", str(tmp_path / "ckpt"),
         "--max-tokens-per-batch", "60", "--max-steps", "1", str(data)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[0])["samples"] == 2


# ---- input and options -----------------------------------------------------------------------

def test_train_names_the_line_of_misaligned_fields(records):
    bad = dict(records[1], logprobs=[0.0])
    _, result = run(["--dry-run"], [records[0], bad], exit_code=1)
    n = len(bad["input_ids"])
    assert f"<stdin>:2: not a valid sample record: logprobs has 1 entries for {n} " \
           f"input_ids" in result.output


def test_train_reads_trl_assistant_masks(records):
    trl = [{k: v for k, v in r.items() if k != "loss_mask"} | {"assistant_masks": r["loss_mask"]}
           for r in records]
    _, result = run(["--dry-run"], trl)
    assert "plan: 4 samples" in result.stderr


def test_train_refuses_or_truncates_samples_over_the_token_budget(records):
    n = len(records[2]["input_ids"])
    _, result = run(["--dry-run", "--max-tokens-per-batch", "40"], records, exit_code=1)
    assert f"<stdin>:1: {len(records[0]['input_ids'])} tokens, more than " \
           f"--max-tokens-per-batch 40 (raise it, or --truncate" in result.output
    _, result = run(["--dry-run", "--max-tokens-per-batch", str(n - 1), "--truncate"], records)
    assert "truncated to the token budget" in result.stderr


@pytest.mark.parametrize("change, problem", [
    ({"logprobs": None}, "<stdin>:1: no logprobs: --algo grpo takes the sampler's logprobs"),
    ({"group": None, "task_id": None}, "<stdin>:1: no group (nor task_id)"),
])
def test_train_grpo_needs_rewards_groups_and_logprobs(records, change, problem):
    _, result = run(["--algo", "grpo", "--dry-run"], [dict(records[0], **change)] + records[1:],
                    exit_code=1)
    assert problem in result.output


def test_train_names_the_line_of_a_token_outside_the_vocabulary(records):
    alien = dict(records[1], input_ids=[1] + [10**6] * (len(records[1]["input_ids"]) - 1))
    _, result = run(["--dry-run"], [records[0], alien], exit_code=1)
    assert "<stdin>:2: token id 1000000 is outside the model's vocabulary (0..49151)" \
        in result.output


def test_train_recomputes_logprobs_when_samples_have_none(records):
    plain = [dict(r, logprobs=None) for r in records]
    _, result = run(["--algo", "grpo", "--dry-run", "--recompute-logprobs"], plain)
    assert "plan: 4 samples" in result.stderr


def test_train_names_both_lines_of_a_rollout_with_two_rewards(records):
    twin = dict(records[1], rollout_id=records[0]["rollout_id"], id="other")
    _, result = run(["--algo", "grpo", "--dry-run"], [records[0], twin], exit_code=1)
    assert "<stdin>:2: reward 0.0 differs from 1.0 given for the same rollout 'r0' on line 1" \
        in result.output
    _, result = run(["--algo", "grpo", "--dry-run", "--skip-invalid"],
                    [records[0], twin] + records[1:])
    assert "1 invalid (1 bad record)" in result.stderr


def test_train_skips_and_counts_samples_without_trained_tokens(records):
    empty = dict(records[0], id="e", rollout_id="e", loss_mask=[0] * len(records[0]["loss_mask"]))
    _, result = run(["--dry-run"], records + [empty])
    assert "5 read, 4 trained, 1 skipped (1 no trained tokens)" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--kl-coef", "0.1"], "--kl-coef applies to --algo grpo only (got --algo sft)"),
    (["--recompute-logprobs"], "--recompute-logprobs applies to --algo grpo only"),
    (["--save-adapter"], "--save-adapter needs --lora-r (LoRA is off)"),
    (["--ray-workers", "4"], "--ray-workers needs --ray"),
    (["--ray", "samples.jsonl"], "--ray 'samples.jsonl': not a Ray address"),
    (["--norm-tokens", "256"], "--norm-tokens applies to --loss-norm constant (got token)"),
    (["--min-lr", "1e-6"], "--min-lr applies to --lr-schedule linear or cosine (got constant)"),
    (["--resume", "--dry-run"], "--resume and --dry-run cannot be used together"),
    (["--algo", "grpo", "--min-reward", "1"], "--min-reward applies to --algo sft only"),
])
def test_train_rejects_incompatible_options_up_front(args, message):
    result = CliRunner().invoke(train, args, input="")
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_train_will_not_replace_a_directory_it_did_not_make(records, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    _, result = run(["--out", str(precious)], records, exit_code=1)
    assert "exists and is not a model train wrote" in result.output
    assert (precious / "notes.txt").read_text() == "mine"


def test_train_config_file_sets_options(records, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("train:\n  algo: grpo\n  max-tokens-per-batch: 60\n")
    _, result = run(["--config", str(config), "--dry-run"], records)
    assert "2 groups (0 with equal rewards skipped)" in result.stderr
    assert "in 4 micro-batches" in result.stderr


# ---- the pieces --------------------------------------------------------------------------------

def test_group_advantages_are_normalised_within_the_group():
    adv = group_advantages({"a": 1.0, "b": 0.0, "c": 0.0, "d": 1.0}, "std")
    std = math.sqrt(1 / 3)  # sample standard deviation of 1, 0, 0, 1
    assert adv["a"] == pytest.approx(0.5 / (std + 1e-4)) and adv["b"] == pytest.approx(-adv["a"])
    assert group_advantages({"a": 3.0, "b": 1.0}, "mean") == {"a": 1.0, "b": -1.0}
    assert group_advantages({"a": 0.5, "b": 0.5}, "std") is None
    assert group_advantages({"a": 1.0}, "std") is None


def test_grpo_loss_clips_the_ratio_and_truncates_negative_advantages():
    logp = torch.log(torch.tensor([1.5, 0.5, 3.0, 1.0]))
    old = torch.zeros(4)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    weights = torch.full((4,), 0.25)
    parts = grpo_loss(logp.clone().requires_grad_(), weights, adv, old, old, recomputed=False,
                      clip_low=0.2, clip_high=0.2, tis_cap=2.0)
    # token 0: ratio 1.5 > 1.2 with A > 0, clipped; token 1: 0.5 < 0.8 with A < 0, clipped;
    # token 2: ratio 3 > tis_cap with A < 0, truncated at 2; token 3: ratio 1, as it is.
    assert parts.clipped == 2 and parts.truncated == 1
    assert parts.loss.item() == pytest.approx(0.25 * (-1.2 + 0.8 + 2.0 - 1.0))

    sampler = torch.log(torch.tensor([0.25, 1.0, 1.0, 1.0]))  # the sampler saw token 0 as rare
    parts = grpo_loss(torch.zeros(4, requires_grad=True), weights, adv, old, sampler,
                      recomputed=True, clip_low=0.2, clip_high=0.2, tis_cap=2.0)
    assert parts.truncated == 1  # old / sampler = 4, truncated to 2
    assert parts.loss.item() == pytest.approx(0.25 * (-1 * 2.0 + 1 + 1 - 1))


def test_the_drift_is_kl_from_the_sampler_estimated_on_its_own_tokens():
    """kl_old estimates KL(old || now) from tokens old sampled: averaged over old's own
    distribution it is that KL exactly (for GRPO's and for SFT's drift), and a token the
    update pushed down adds its lost log-probability, not 1 / its new probability."""
    from tracewheel_train.losses import sft_loss

    old_p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    now_p = torch.tensor([0.1, 0.3, 0.3, 0.2, 0.1], dtype=torch.float64)
    exact = float((old_p * (old_p / now_p).log()).sum())
    one = torch.ones(1, dtype=torch.float64)
    grpo, sft = 0.0, 0.0
    for token in range(5):
        now, old = now_p[token].log().reshape(1), old_p[token].log().reshape(1)
        parts = grpo_loss(now.clone().requires_grad_(), one, one, old, old, recomputed=False,
                          clip_low=0.2, clip_high=0.2, tis_cap=2.0)
        grpo += float(old_p[token] * parts.kl_old)
        sft += float(old_p[token] * sft_loss(now.clone(), one, sampler=old).kl_old)
    assert grpo == pytest.approx(exact, rel=1e-9) and sft == pytest.approx(exact, rel=1e-9)

    pushed = grpo_loss(torch.tensor([math.log(1e-6)], requires_grad=True), torch.ones(1),
                       torch.ones(1), torch.tensor([math.log(0.5)]), None, recomputed=True,
                       clip_low=0.2, clip_high=0.2, tis_cap=2.0)
    assert pushed.kl_old.item() == pytest.approx(2e-6 - 1 - math.log(2e-6), rel=1e-4)  # ~12.1


def _sample(i: int, rollout: str, length: int, trained: int) -> TrainSample:
    import numpy as np

    mask = np.zeros(length, dtype=bool)
    mask[length - trained:] = True
    return TrainSample(id=f"s{i}", rollout=rollout, group="g", reward=1.0, line=i + 1,
                       input_ids=np.arange(length, dtype=np.int32), loss_mask=mask,
                       logprobs=None)


def test_a_rollout_split_into_two_samples_weighs_as_one_under_rollout_norm():
    samples = [_sample(0, "a", 10, 4), _sample(1, "a", 10, 4), _sample(2, "b", 10, 8)]
    weights = token_weights(samples, [0, 1, 2], "rollout")
    per_rollout = {r: sum(weights[i] * samples[i].trained for i in range(3)
                          if samples[i].rollout == r) for r in "ab"}
    assert per_rollout == {"a": pytest.approx(0.5), "b": pytest.approx(0.5)}
    weights = token_weights(samples, [0, 1, 2], "token")
    assert set(weights.values()) == {1 / 16}
    weights = token_weights(samples, [0, 1, 2], "sequence")
    assert sum(weights[i] * samples[i].trained for i in range(3)) == pytest.approx(1.0)
    # Dr. GRPO: every token of every sample 1 / (3 samples * 100), whatever its length
    weights = token_weights(samples, [0, 1, 2], "constant", norm_tokens=100)
    assert list(weights.values()) == pytest.approx([1 / 300] * 3)


def test_packing_respects_the_budget_and_keeps_processes_in_lockstep():
    lengths = [30, 50, 20, 70, 10, 40, 60]
    batches = pack(list(range(7)), lengths, 100)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(sum(lengths[i] for i in b) <= 100 for b in batches)
    assert len(batches) == 3  # 280 tokens in three rows of at most 100
    ranks = spread(batches, lengths, world=2, per_rank=2)
    assert [len(r) for r in ranks] == [2, 2] and sum(1 for r in ranks for b in r if not b) == 1

    samples = [_sample(i, f"r{i}", n, 2) for i, n in enumerate(lengths)]
    cfg = TrainConfig(max_tokens_per_batch=100, epochs=2, seed=1)
    steps = plan_steps(samples, cfg, world=2)
    assert len(steps) == 4 and {s.epoch for s in steps} == {0, 1}
    assert plan_steps(samples, cfg, world=2)[0].batches == steps[0].batches  # seeded
    assert all(len(rank) == 1 for s in steps for rank in s.batches)


# ---- experiment trackers and progress in logs ------------------------------------------------

def test_report_to_tensorboard_holds_the_metrics_of_stdout(records, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "tb"
    metrics, _ = run(["--out", str(tmp_path / "ckpt"), "--epochs", "2", "--lr", "1e-4",
                      "--report-to", "tensorboard", "--report-dir", str(logs)], records)
    events = EventAccumulator(str(next(p.parent for p in logs.rglob("events.out.tfevents*"))))
    events.Reload()
    for key in ("loss", "lr", "grad_norm"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(m["step"], pytest.approx(m[key], rel=1e-6)) for m in metrics], key


def test_report_to_a_tracker_that_is_not_installed_says_what_to_install(records, tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    _, result = run(["--out", str(tmp_path / "ckpt"), "--report-to", "wandb"], records,
                    exit_code=1)
    assert "--report-to wandb needs the wandb package: pip install wandb" in result.stderr
    assert not (tmp_path / "ckpt").exists()


def test_training_in_a_log_writes_progress_lines(records, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEWHEEL_PROGRESS_SECONDS", "0.05")
    _, result = run(["--out", str(tmp_path / "ckpt"), "--epochs", "2", "--lr", "1e-4"],
                    records)
    lines = [line for line in result.stderr.splitlines() if line.startswith("train: step ")]
    assert lines, result.stderr
    assert " of 2 (" in lines[-1] and "elapsed" in lines[-1]
