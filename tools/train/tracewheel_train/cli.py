"""train: SFT or GRPO on merged samples; a Hugging Face model directory out, metrics on stdout."""

from __future__ import annotations

import os
from typing import IO, Any

import click

from tracewheel.cli import common_options, input_name, input_options, output_option, tool_command
from tracewheel.errors import TracewheelError
from tracewheel.extras import require

from .checkpoint import check_out_dir
from .config import TrainConfig
from .objectives import OBJECTIVES
from .run import Job, train
from .tracking import REPORT_TO, check_report_to

D = TrainConfig()  # the defaults, stated once (config.py)
LORA_ONLY = ("lora_alpha", "lora_dropout", "save_adapter")
RAY_ONLY = ("ray_workers", "ray_gpu")


def _policy_map(entries: tuple[str, ...]) -> dict[str, str] | None:
    from tracewheel.policies import parse_policy_map

    try:
        return parse_policy_map(entries) or None
    except TracewheelError as err:
        raise click.BadParameter(err.message) from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the user set an option (flag, environment or --config), not just its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source != click.core.ParameterSource.DEFAULT


def check_options(ctx: click.Context, p: dict[str, Any]) -> None:
    """Reject combinations that cannot work, naming both options, before anything is read."""
    def refuse(message: str) -> None:
        raise click.UsageError(message, ctx)

    for algo, objective in OBJECTIVES.items():
        for name in objective.options if algo != p["algo"] else ():
            if _given(ctx, name):
                refuse(f"{_flag(name)} applies to --algo {algo} only (got --algo {p['algo']})")
    if not p["lora_r"]:
        for name in LORA_ONLY:
            if _given(ctx, name):
                refuse(f"{_flag(name)} needs --lora-r (LoRA is off)")
    if p["ray_address"] is None:
        for name in RAY_ONLY:
            if _given(ctx, name):
                refuse(f"{_flag(name)} needs --ray")
    else:
        address = p["ray_address"]
        if address not in ("local", "auto") and ":" not in address:
            refuse(f"--ray {address!r}: not a Ray address (local, auto, HOST:PORT or "
                   f"ray://HOST:PORT); to give INPUT after --ray, write --ray local INPUT")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            refuse("--ray cannot run under accelerate launch (Ray starts its own workers)")
    if p["policies"]:
        if not p["lora_r"]:
            refuse("--policy trains one LoRA adapter per policy: give --lora-r")
        if p["ray_address"] is not None:
            refuse("--policy and --ray cannot be used together yet")
        if p["init_adapter"]:
            refuse("--policy starts each policy from --init-adapters DIR/POLICY, not "
                   "--init-adapter")
    else:
        for name in ("default_policy", "init_adapters"):
            if _given(ctx, name):
                refuse(f"{_flag(name)} needs --policy (the policy map)")
    if p["init_adapter"] and not p["lora_r"]:
        refuse("--init-adapter needs --lora-r (its rank)")
    if (p["max_lag"] is None) != (p["policy_version"] is None):
        refuse("--max-lag and --policy-version go together (a lag is counted from the trained "
               "model's version)")
    if p["loss_norm"] != "constant" and _given(ctx, "norm_tokens"):
        refuse(f"--norm-tokens applies to --loss-norm constant (got {p['loss_norm']})")
    if p["lr_schedule"] == "constant" and _given(ctx, "min_lr"):
        refuse("--min-lr applies to --lr-schedule linear or cosine (got constant)")
    if p["resume"] is not None and p["dry_run"]:
        refuse("--resume and --dry-run cannot be used together")
    if p["attn"] == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            refuse("--attn flash_attention_2 needs the flash-attn package (pip install "
                   "flash-attn), and a GPU")


@tool_command("train")
@common_options
@input_options
@output_option
@click.option("--model", default=D.model, show_default=True, metavar="NAME|DIR",
              help="Model to start from: the embedded model's name or a Hugging Face model dir.")
@click.option("--algo", type=click.Choice(list(OBJECTIVES)), default=D.algo, show_default=True,
              help="; ".join(f"{name}: {o.help}" for name, o in OBJECTIVES.items()) + ".")
@click.option("--out", default=D.out, show_default=True, metavar="DIR",
              help="Final model directory (weights, config, tokenizer), written atomically.")
@click.option("--max-tokens-per-batch", type=click.IntRange(16), metavar="N",
              default=D.max_tokens_per_batch,
              show_default=True, help="Token budget of a micro-batch (samples packed into one "
                                      "row, no attention across them).")
@click.option("--grad-accum", type=click.IntRange(1), metavar="N", default=D.grad_accum,
              show_default=True,
              help="Micro-batches per optimizer step, per process.")
@click.option("--epochs", type=click.IntRange(1), metavar="N", default=D.epochs, show_default=True,
              help="Passes over the samples.")
@click.option("--max-steps", type=click.IntRange(1), metavar="N", default=D.max_steps,
              help="Stop after this many optimizer steps.")
@click.option("--truncate", is_flag=True,
              help="Cut samples longer than the token budget (counted) instead of refusing them.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), metavar="X",
              default=D.lr, show_default=True,
              help="Peak learning rate (AdamW).")
@click.option("--lr-schedule", type=click.Choice(["constant", "linear", "cosine"]),
              default=D.lr_schedule, show_default=True, help="Decay after warmup.")
@click.option("--warmup-steps", type=click.IntRange(0), metavar="N", default=D.warmup_steps,
              show_default=True,
              help="Linear warmup steps.")
@click.option("--min-lr", type=click.FloatRange(0), metavar="X", default=D.min_lr,
              show_default=True,
              help="Where linear and cosine decay end.")
@click.option("--weight-decay", type=click.FloatRange(0), metavar="X",
              default=D.weight_decay, show_default=True,
              help="AdamW weight decay (matrices only).")
@click.option("--max-grad-norm", type=click.FloatRange(0), metavar="X",
              default=D.max_grad_norm, show_default=True,
              help="Clip the gradient norm; 0: no clipping.")
@click.option("--loss-norm", type=click.Choice(["token", "sequence", "rollout", "constant"]),
              default=D.loss_norm, show_default=True,
              help="Loss mean over the step's trained tokens (DAPO), over its samples (GRPO), "
                   "or over its rollouts (a trajectory split into several samples weighs as "
                   "one); constant: the tokens' sum / (samples * --norm-tokens) (Dr. GRPO).")
@click.option("--norm-tokens", type=click.IntRange(1), metavar="N", default=D.norm_tokens,
              show_default=True,
              help="With --loss-norm constant: the length a sample's token sum is divided by "
                   "(a sample's generation budget).")
@click.option("--adv-norm", type=click.Choice(["std", "mean"]), default=D.adv_norm,
              show_default=True,
              help="GRPO advantage: (r - mean) / (std + eps) within the group, or r - mean.")
@click.option("--clip-low", type=click.FloatRange(0, 1), metavar="X",
              default=D.clip_low, show_default=True,
              help="GRPO: PPO clip below, ratio >= 1 - clip-low.")
@click.option("--clip-high", type=click.FloatRange(0), metavar="X", default=D.clip_high,
              show_default=True,
              help="GRPO: PPO clip above, ratio <= 1 + clip-high.")
@click.option("--recompute-logprobs", is_flag=True,
              help="GRPO: old log-probabilities from the trainer (one pass before training) "
                   "instead of the sampler's recorded logprobs.")
@click.option("--tis-cap", type=click.FloatRange(1, min_open=True), metavar="X", default=D.tis_cap,
              show_default=True,
              help="GRPO: truncation of the sampler/trainer importance weight.")
@click.option("--kl-coef", type=click.FloatRange(0), metavar="X", default=D.kl_coef,
              show_default=True,
              help="GRPO: KL penalty to the frozen starting model; 0: none (no reference).")
@click.option("--min-reward", type=float, metavar="X", default=D.min_reward,
              help="SFT: learn only samples whose reward is at least X (rejection sampling on "
                   "the agent's own rollouts: --min-reward 1 keeps the right ones); the rest "
                   "are counted and left out.")
@click.option("--policy-version", type=click.IntRange(0), metavar="N", default=D.policy_version,
              help="The version of --model, for --max-lag: the number the loop's vLLM served "
                   "it under.")
@click.option("--max-lag", type=click.IntRange(0), metavar="L", default=D.max_lag,
              help="Learn only samples sampled by weights at most L versions older than "
                   "--policy-version (each sample's weight_version, from rollout); older ones "
                   "are counted and left out, and a sample without a version is an error.")
@click.option("--policy", "policies", multiple=True, metavar="AGENT=POLICY[,...]",
              callback=lambda ctx, param, value: _policy_map(value),
              help="Multi-agent: train one LoRA adapter per POLICY on the samples of its agents "
                   "(each sample's agent; GRPO groups within a policy), into --out/POLICY, with "
                   "--out/policies.json the map. Needs --lora-r. Repeat, or comma-separate.")
@click.option("--default-policy", metavar="POLICY", default=D.default_policy,
              help="With --policy: the policy of agents outside the map; one the map does not "
                   "name (the base) is not trained, and its agents' samples are counted and "
                   "left out. Without it such a sample is an error.")
@click.option("--init-adapters", metavar="DIR", default=D.init_adapters,
              help="With --policy: an earlier run's --out; each policy starts from its adapter "
                   "there (a fresh one where it has none).")
@click.option("--init-adapter", metavar="DIR", default=D.init_adapter,
              help="With --lora-r: start from this LoRA adapter (of that rank).")
@click.option("--lora-r", type=click.IntRange(0), metavar="N", default=D.lora_r, show_default=True,
              help="LoRA rank (peft, all linear layers); 0 trains all weights.")
@click.option("--lora-alpha", type=click.FloatRange(0, min_open=True), metavar="X",
              default=D.lora_alpha,
              help="LoRA alpha (default: 2 * rank).")
@click.option("--lora-dropout", type=click.FloatRange(0, 1), metavar="X",
              default=D.lora_dropout, show_default=True,
              help="LoRA dropout.")
@click.option("--save-adapter", is_flag=True,
              help="With LoRA: write the adapter, not weights with the adapter merged in.")
@click.option("--gradient-checkpointing", is_flag=True,
              help="Recompute activations in the backward pass: less memory, ~30% slower.")
@click.option("--mixed-precision", type=click.Choice(["auto", "bf16", "fp32"]),
              default=D.mixed_precision,
              show_default=True, help="auto: bf16 autocast on a GPU (or what accelerate launch "
                                      "says); on a CPU, bf16 where it is native "
                                      "(AVX512-BF16, AMX), else fp32.")
@click.option("--attn", type=click.Choice(["auto", "varlen_sdpa", "flash_attention_2", "sdpa",
                                           "eager"]), default=D.attn, show_default=True,
              help="Attention kernel; auto: flash_attention_2 where installed on a GPU, else "
                   "varlen_sdpa (SDPA per packed sample).")
@click.option("--seed", type=int, default=D.seed, show_default=True,
              help="Seed of data order and initialisation: the same seed gives the same run.")
@click.option("--save-every", type=click.IntRange(0), metavar="N", default=D.save_every,
              show_default=True,
              help="Write a resumable checkpoint every N steps; 0: only the final model.")
@click.option("--keep-checkpoints", type=click.IntRange(1), metavar="N",
              default=D.keep_checkpoints, show_default=True,
              help="Step checkpoints kept (the newest).")
@click.option("--checkpoint-dir", metavar="DIR", default=D.checkpoint_dir,
              help="Where step checkpoints go (default: OUT.steps).")
@click.option("--resume", is_flag=False, flag_value="latest", default=D.resume, metavar="[DIR]",
              help="Continue from the newest step checkpoint, or from DIR.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              metavar="[ADDRESS]",
              help="Train with Ray Train: a local Ray, or the cluster at ADDRESS (auto, "
                   "HOST:PORT, ray://HOST:PORT).")
@click.option("--ray-workers", type=click.IntRange(1), metavar="N", default=2, show_default=True,
              help="Ray Train workers (one GPU each on GPU clusters).")
@click.option("--ray-gpu/--ray-cpu", "ray_gpu", default=None,
              help="Ray workers on GPUs or CPUs (default: GPUs when the cluster has them).")
@click.option("--allow-empty", is_flag=True,
              help="With no sample left to train on (every GRPO group with equal rewards, say), "
                   "write the starting model to --out unchanged and succeed, instead of failing.")
@click.option("--report-to", type=click.Choice(REPORT_TO), multiple=True, default=("none",),
              show_default=True,
              help="Also log the metrics to an experiment tracker (Accelerate's): TensorBoard "
                   "event files, wandb (offline unless WANDB_MODE says otherwise) or MLflow (a "
                   "local file store unless MLFLOW_TRACKING_URI names a server). Repeatable.")
@click.option("--report-dir", metavar="DIR", default=None,
              help="Where the trackers write [default: OUT.logs].")
@click.option("--dry-run", is_flag=True,
              help="Check the samples and print the plan (steps, batches) without training.")
def main(input: IO[bytes], output: str | None, skip_invalid: bool, quiet: bool, verbose: int,
         ray_address: str | None, ray_workers: int, ray_gpu: bool | None, dry_run: bool,
         allow_empty: bool, report_to: tuple[str, ...], report_dir: str | None,
         **options: Any) -> None:
    """Train the policy on merged samples: SFT or GRPO, with Accelerate or Ray.

    Reads sample records (from ctx-merge) from INPUT (default stdin), writes the trained model
    to --out as a Hugging Face model directory that vLLM serves, and one line of metrics per
    optimizer step on stdout (loss, lr, grad_norm, tokens_per_s, reward, kl, clip_frac, ...).

    \b
    Examples:
      train --model smollm2-135m --algo grpo --out ckpt/ < samples.jsonl
      train --algo sft --lora-r 16 --epochs 3 --out ckpt/ samples.jsonl > metrics.jsonl
      accelerate launch --num_processes 8 -m tracewheel_train --out ckpt/ samples.jsonl
      train --ray auto --ray-workers 16 --algo grpo --out /shared/ckpt/ samples.jsonl
    """
    ctx = click.get_current_context()
    check_options(ctx, {**options, "ray_address": ray_address, "dry_run": dry_run})
    require("train", "torch", "transformers", "accelerate", *(["ray"] if ray_address else []))
    cfg = TrainConfig.from_dict(options)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and input_name(input) == "<stdin>":
        raise click.UsageError(f"under accelerate launch with {world} processes, give INPUT as "
                               f"a file: every process reads it", ctx)
    if not dry_run:
        check_out_dir(cfg.out)
        check_report_to(report_to)
    train(cfg, Job(input, output, skip_invalid, quiet, verbose, ray_address, ray_workers,
                   ray_gpu, dry_run, allow_empty, report_to, report_dir))


if __name__ == "__main__":
    main()
