"""train: SFT or GRPO on merged samples; a Hugging Face model directory out, metrics on stdout."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import IO, TYPE_CHECKING, Any

import click

from flywheel.cli import (
    ProgressLog,
    Summary,
    common_options,
    hint_if_waiting,
    input_name,
    input_options,
    output_option,
    tool_command,
)
from flywheel.errors import FlywheelError
from flywheel.extras import require
from flywheel.jsonl import ReadStats, open_output
from flywheel.models import resolve_model

from .checkpoint import check_out_dir
from .config import TrainConfig
from .tracking import REPORT_TO, Trackers, check_report_to

if TYPE_CHECKING:  # .data imports torch: `train --help` answers without it
    from .data import DataReport

GRPO_ONLY = ("adv_norm", "clip_low", "clip_high", "recompute_logprobs", "tis_cap", "kl_coef")
LORA_ONLY = ("lora_alpha", "lora_dropout", "save_adapter")
RAY_ONLY = ("ray_workers", "ray_gpu")


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

    if p["algo"] == "sft":
        for name in GRPO_ONLY:
            if _given(ctx, name):
                refuse(f"{_flag(name)} applies to --algo grpo only (got --algo sft)")
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
    if p["lr_schedule"] == "constant" and _given(ctx, "min_lr"):
        refuse("--min-lr applies to --lr-schedule linear or cosine (got constant)")
    if p["resume"] is not None and p["dry_run"]:
        refuse("--resume and --dry-run cannot be used together")
    if p["attn"] == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            refuse("--attn flash_attention_2 needs the flash-attn package (pip install "
                   "flash-attn), and a GPU")


def summarise(summary: Summary, report: DataReport, stats: ReadStats, algo: str) -> None:
    summary.add("read", report.read)
    summary.add("trained", report.kept)
    for reason, n in report.skipped.most_common():
        summary.add("skipped", n, reason=reason)
    summary.absorb(stats)
    if report.truncated:
        summary.extra.append(f"{report.truncated} truncated to the token budget")
    if algo == "grpo":
        summary.extra.append(f"{report.groups} groups ({report.groups_skipped} with equal "
                             f"rewards skipped)")


@tool_command("train")
@common_options
@input_options
@output_option
@click.option("--model", default="smollm2-135m", show_default=True, metavar="NAME|DIR",
              help="Model to start from: the embedded model's name or a Hugging Face model dir.")
@click.option("--algo", type=click.Choice(["sft", "grpo"]), default="sft", show_default=True,
              help="sft: cross-entropy on loss_mask tokens; grpo: group-relative clipped policy "
                   "gradient with the rollouts' rewards and logprobs.")
@click.option("--out", default="checkpoint", show_default=True, metavar="DIR",
              help="Final model directory (weights, config, tokenizer), written atomically.")
@click.option("--max-tokens-per-batch", type=click.IntRange(16), metavar="N", default=4096,
              show_default=True, help="Token budget of a micro-batch (samples packed into one "
                                      "row, no attention across them).")
@click.option("--grad-accum", type=click.IntRange(1), metavar="N", default=1, show_default=True,
              help="Micro-batches per optimizer step, per process.")
@click.option("--epochs", type=click.IntRange(1), metavar="N", default=1, show_default=True,
              help="Passes over the samples.")
@click.option("--max-steps", type=click.IntRange(1), metavar="N", default=None,
              help="Stop after this many optimizer steps.")
@click.option("--truncate", is_flag=True,
              help="Cut samples longer than the token budget (counted) instead of refusing them.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), metavar="X",
              default=1e-5, show_default=True,
              help="Peak learning rate (AdamW).")
@click.option("--lr-schedule", type=click.Choice(["constant", "linear", "cosine"]),
              default="constant", show_default=True, help="Decay after warmup.")
@click.option("--warmup-steps", type=click.IntRange(0), metavar="N", default=0, show_default=True,
              help="Linear warmup steps.")
@click.option("--min-lr", type=click.FloatRange(0), metavar="X", default=0.0, show_default=True,
              help="Where linear and cosine decay end.")
@click.option("--weight-decay", type=click.FloatRange(0), metavar="X",
              default=0.0, show_default=True,
              help="AdamW weight decay (matrices only).")
@click.option("--max-grad-norm", type=click.FloatRange(0), metavar="X",
              default=1.0, show_default=True,
              help="Clip the gradient norm; 0: no clipping.")
@click.option("--loss-norm", type=click.Choice(["token", "sequence", "rollout"]),
              default="token", show_default=True,
              help="Loss mean over the step's trained tokens, over its samples, or over its "
                   "rollouts (a trajectory split into several samples weighs as one).")
@click.option("--adv-norm", type=click.Choice(["std", "mean"]), default="std", show_default=True,
              help="GRPO advantage: (r - mean) / (std + eps) within the group, or r - mean.")
@click.option("--clip-low", type=click.FloatRange(0, 1), metavar="X",
              default=0.2, show_default=True,
              help="GRPO: PPO clip below, ratio >= 1 - clip-low.")
@click.option("--clip-high", type=click.FloatRange(0), metavar="X", default=0.2, show_default=True,
              help="GRPO: PPO clip above, ratio <= 1 + clip-high.")
@click.option("--recompute-logprobs", is_flag=True,
              help="GRPO: old log-probabilities from the trainer (one pass before training) "
                   "instead of the sampler's recorded logprobs.")
@click.option("--tis-cap", type=click.FloatRange(1, min_open=True), metavar="X", default=2.0,
              show_default=True,
              help="GRPO: truncation of the sampler/trainer importance weight.")
@click.option("--kl-coef", type=click.FloatRange(0), metavar="X", default=0.0, show_default=True,
              help="GRPO: KL penalty to the frozen starting model; 0: none (no reference).")
@click.option("--lora-r", type=click.IntRange(0), metavar="N", default=0, show_default=True,
              help="LoRA rank (peft, all linear layers); 0 trains all weights.")
@click.option("--lora-alpha", type=click.FloatRange(0, min_open=True), metavar="X", default=None,
              help="LoRA alpha (default: 2 * rank).")
@click.option("--lora-dropout", type=click.FloatRange(0, 1), metavar="X",
              default=0.0, show_default=True,
              help="LoRA dropout.")
@click.option("--save-adapter", is_flag=True,
              help="With LoRA: write the adapter, not weights with the adapter merged in.")
@click.option("--gradient-checkpointing", is_flag=True,
              help="Recompute activations in the backward pass: less memory, ~30% slower.")
@click.option("--mixed-precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto",
              show_default=True, help="auto: bf16 autocast on a GPU (or what accelerate launch "
                                      "says); on a CPU, bf16 for SFT where it is native "
                                      "(AVX512-BF16, AMX), else fp32.")
@click.option("--attn", type=click.Choice(["auto", "varlen_sdpa", "flash_attention_2", "sdpa",
                                           "eager"]), default="auto", show_default=True,
              help="Attention kernel; auto: flash_attention_2 where installed on a GPU, else "
                   "varlen_sdpa (SDPA per packed sample).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of data order and initialisation: the same seed gives the same run.")
@click.option("--save-every", type=click.IntRange(0), metavar="N", default=0, show_default=True,
              help="Write a resumable checkpoint every N steps; 0: only the final model.")
@click.option("--keep-checkpoints", type=click.IntRange(1), metavar="N",
              default=2, show_default=True,
              help="Step checkpoints kept (the newest).")
@click.option("--checkpoint-dir", metavar="DIR", default=None,
              help="Where step checkpoints go (default: OUT.steps).")
@click.option("--resume", is_flag=False, flag_value="latest", default=None, metavar="[DIR]",
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
      accelerate launch --num_processes 8 -m flywheel_tools.train --out ckpt/ samples.jsonl
      train --ray auto --ray-workers 16 --algo grpo --out /shared/ckpt/ samples.jsonl
    """
    ctx = click.get_current_context()
    check_options(ctx, {**options, "ray_address": ray_address, "dry_run": dry_run})
    require("train", "torch", "transformers", "accelerate", *(["ray"] if ray_address else []))
    cfg = TrainConfig.from_dict(options)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    main_process = int(os.environ.get("RANK", "0")) == 0
    name = input_name(input)
    if world > 1 and name == "<stdin>":
        raise click.UsageError(f"under accelerate launch with {world} processes, give INPUT as "
                               f"a file: every process reads it", ctx)
    if not dry_run:
        check_out_dir(cfg.out)
        check_report_to(report_to)

    from transformers import AutoConfig

    from .data import fingerprint, plan_steps, read_samples

    vocab_size = AutoConfig.from_pretrained(resolve_model(cfg.model)).vocab_size
    summary = Summary("train")
    stats = ReadStats()
    hint_if_waiting(input, "train")
    warn = (lambda msg: click.echo(f"train: {msg}", err=True)) if verbose else None
    samples, report = read_samples(input, name, cfg, vocab_size=vocab_size,
                                   skip_invalid=skip_invalid, stats=stats, warn=warn)
    summarise(summary, report, stats, cfg.algo)
    show = main_process and not quiet
    if not samples:
        why = ""
        if report.skipped.get("equal rewards in group"):
            why = " (every group had equal rewards: GRPO learns only from differences)"
        elif report.skipped.get("no reward"):
            why = " (no sample had a reward)"
        if allow_empty and not dry_run:
            if main_process:
                from .checkpoint import copy_model

                copy_model(resolve_model(cfg.model), cfg.out, cfg.to_dict())
            summary.extra.append(f"no samples to train on{why}: model in {cfg.out} unchanged")
            summary.print(quiet or not main_process)
            return
        summary.print(quiet or not main_process)
        raise FlywheelError(f"no samples to train on{why}; --allow-empty writes the starting "
                            f"model unchanged instead")

    processes = ray_workers if ray_address else world
    steps = plan_steps(samples, cfg, processes)
    micro = sum(1 for s in steps for rank in s.batches for mb in rank if mb)
    plan = (f"{len(samples)} samples, {report.tokens} tokens ({report.trained_tokens} trained) "
            f"in {micro} micro-batches, {len(steps)} steps on {processes} process"
            f"{'es' * (processes > 1)}")
    if dry_run:
        if show:
            click.echo(f"train: plan: {plan}", err=True)
        summary.print(quiet or not main_process)
        return
    if show:
        click.echo(f"train: {plan}", err=True)

    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars: noise in a pipeline's log
    data_id = fingerprint(samples)
    log = (lambda line: click.echo(f"train: {line}", err=True)) if show else (lambda line: None)
    steps_done = 0
    reader_gone = False
    trackers = Trackers(report_to if main_process else (), report_dir or f"{cfg.out}.logs",
                        os.path.basename(os.path.normpath(cfg.out)), cfg.to_dict())
    with open_output(output if main_process else os.devnull) as out:
        bar = _progress_bar(len(steps), show)

        def emit(metrics: dict) -> None:
            nonlocal steps_done, reader_gone
            steps_done += 1
            if bar is not None:
                speed = metrics.get("tokens_per_s")
                bar.update(1, **({"speed": f"{speed:.0f} tokens/s"} if speed else {}))
            trackers.log(metrics)
            if reader_gone:
                return
            try:
                out.write(metrics)
            except BrokenPipeError:
                # `train ... | head`: the model is what matters; training goes on unheard.
                reader_gone = True
                _silence_stdout()
                log("stdout closed: no more metrics there; training goes on")

        try:
            if ray_address:
                from .ray_train import run

                run(cfg, samples, data_id, address=ray_address, workers=ray_workers,
                    gpu=ray_gpu, emit=emit, log=log, verbose=verbose)
            else:
                from .trainer import Trainer

                Trainer(cfg, samples, fingerprint=data_id, emit=emit, log=log).setup().train()
        finally:
            if bar is not None:
                bar.close()
            trackers.finish()
    summary.extra.append(f"{steps_done} steps")
    summary.extra.append(f"model in {cfg.out}")
    summary.print(not main_process or quiet)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that no later write or the final flush fails."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


class _Bar:
    """tqdm on a terminal, with the same ``update(n, **figures)`` as ProgressLog."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="train", unit="step", file=sys.stderr, leave=False)

    def update(self, n: int = 1, **figures: str) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _progress_bar(total: int, show: bool) -> _Bar | ProgressLog | None:
    """A bar on a terminal; in a log, a progress line at a steady interval."""
    if not show:
        return None
    if not sys.stderr.isatty():
        return ProgressLog("train", total=total, unit="step")
    return _Bar(total)


if __name__ == "__main__":
    main()
