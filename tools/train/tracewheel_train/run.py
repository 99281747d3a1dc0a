"""A training run, as the `train` command carries it out: read and check the samples, plan the
steps, train in this process (Accelerate) or on Ray, and report. Plain functions over
``TrainConfig`` (what to train) and ``Job`` (how this run reads, writes and reports)."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import IO, Any

import click

from tracewheel.cli import ProgressLog, Summary, hint_if_waiting, input_name
from tracewheel.errors import TracewheelError
from tracewheel.jsonl import ReadStats, open_output
from tracewheel.models import resolve_model

from .config import TrainConfig
from .objectives import objective
from .tracking import Trackers


@dataclass
class Job:
    """How one run goes, beside what it trains."""

    input: IO[bytes]
    output: str | None = None          # metrics JSONL (stdout when None)
    skip_invalid: bool = False
    quiet: bool = False
    verbose: int = 0
    ray_address: str | None = None     # train on Ray (local, auto, an address)
    ray_workers: int = 2
    ray_gpu: bool | None = None
    dry_run: bool = False              # plan only
    allow_empty: bool = False          # no sample left: write the starting model unchanged
    report_to: tuple[str, ...] = ("none",)
    report_dir: str | None = None      # default <out>.logs

    @property
    def main_process(self) -> bool:
        return int(os.environ.get("RANK", "0")) == 0

    @property
    def show(self) -> bool:
        return self.main_process and not self.quiet


def train(cfg: TrainConfig, job: Job) -> None:
    """The whole run: samples in, a model directory and metrics out, the summary on stderr."""
    from .data import fingerprint, plan_steps

    summary = Summary("train")
    samples, report = _read(cfg, job, summary)
    if cfg.policies is not None:
        return _train_policies(cfg, job, summary, samples)
    if not samples:
        return _nothing_to_train(cfg, job, summary, report)
    processes = job.ray_workers if job.ray_address else int(os.environ.get("WORLD_SIZE", "1"))
    steps = plan_steps(samples, cfg, processes)
    micro = sum(1 for s in steps for rank in s.batches for mb in rank if mb)
    plan = (f"{len(samples)} samples, {report.tokens} tokens ({report.trained_tokens} trained) "
            f"in {micro} micro-batches, {len(steps)} steps on {processes} process"
            f"{'es' * (processes > 1)}")
    if job.show:
        click.echo(f"train: {'plan: ' * job.dry_run}{plan}", err=True)
    if not job.dry_run:
        done = _fit(cfg, job, samples, fingerprint(samples), len(steps))
        summary.extra += [f"{done} steps", f"model in {cfg.out}"]
    summary.print(job.quiet or not job.main_process)


def _train_policies(cfg: TrainConfig, job: Job, summary: Summary, samples: list) -> None:
    """Multi-agent: one LoRA adapter per policy, each trained on its own agents' samples (GRPO
    groups within the policy), one after another, into --out/POLICY; then --out/policies.json,
    the map. A policy with no sample keeps its --init-adapters adapter (or, with --allow-empty
    and none, gets a new one that changes nothing)."""
    import dataclasses
    from pathlib import Path

    from tracewheel.jsonl import atomic_path

    from .checkpoint import MARKER, write_json
    from .data import fingerprint, plan_steps

    out = Path(cfg.out)
    names = sorted(set(cfg.policies.values()))
    processes = job.ray_workers if job.ray_address else int(os.environ.get("WORLD_SIZE", "1"))
    manifest: dict[str, Any] = {"base_model": cfg.model, "default_policy": cfg.default_policy,
                                "policies": {}}
    for name in names:
        part = [s for s in samples if s.policy == name]
        start = Path(cfg.init_adapters, name) if cfg.init_adapters else None
        if start is not None and not (start / "adapter_config.json").is_file():
            start = None  # a policy new in this run starts from a fresh adapter
        sub = dataclasses.replace(cfg, out=str(out / name), policies=None, default_policy=None,
                                  init_adapters=None, save_adapter=True, checkpoint_dir=None,
                                  init_adapter=str(start) if start else None)
        steps = plan_steps(part, sub, processes) if part else []
        agents = sorted(a for a, p in cfg.policies.items() if p == name)
        if job.show:
            click.echo(f"train: {'plan: ' * job.dry_run}policy {name} ({', '.join(agents)}): "
                       f"{len(part)} samples, {sum(s.trained for s in part)} trained tokens, "
                       f"{len(steps)} steps" + (f", from {start}" if start else ""), err=True)
        manifest["policies"][name] = {"agents": agents, "samples": len(part),
                                      "steps": len(steps), "from": str(start) if start else None}
        if job.dry_run:
            continue
        if not part:
            if start is None and not job.allow_empty:
                raise TracewheelError(f"policy {name} ({', '.join(agents)}): no samples to "
                                      f"train on, and no earlier adapter (--init-adapters) to "
                                      f"keep; --allow-empty writes a new one that changes "
                                      f"nothing")
            if job.main_process:
                _unchanged_adapter(sub, start)
            summary.extra.append(f"policy {name}: no samples, adapter unchanged")
            continue
        done = _fit(sub, job, part, fingerprint(part), len(steps), tag={"policy": name})
        summary.extra.append(f"policy {name}: {done} steps")
    if not job.dry_run and job.main_process:
        with atomic_path(out / "policies.json") as tmp:
            write_json(Path(tmp), manifest)
        write_json(out / MARKER, {"tool": "train", "weights": "adapters", **manifest})
        summary.extra.append(f"adapters in {out}")
    summary.print(job.quiet or not job.main_process)


def _unchanged_adapter(cfg: TrainConfig, start: Any) -> None:
    """--out/POLICY for a policy with nothing to learn: its earlier adapter, or a new one (its B
    matrices are zero: it changes nothing)."""
    import shutil
    from pathlib import Path

    from .checkpoint import replace_dir, temp_dir_beside

    final = Path(cfg.out)
    tmp = temp_dir_beside(final)
    try:
        if start is not None:
            shutil.rmtree(tmp)
            shutil.copytree(start, tmp)
        else:
            import torch
            from peft import get_peft_model
            from transformers import AutoModelForCausalLM

            from .trainer import lora_config

            base = AutoModelForCausalLM.from_pretrained(resolve_model(cfg.model),
                                                        dtype=torch.float32)
            get_peft_model(base, lora_config(cfg)).save_pretrained(tmp)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read(cfg: TrainConfig, job: Job, summary: Summary) -> tuple[list, Any]:
    """The samples, checked against the model's vocabulary; the read counted in ``summary``."""
    from transformers import AutoConfig

    from .data import read_samples

    vocab_size = AutoConfig.from_pretrained(resolve_model(cfg.model)).vocab_size
    stats = ReadStats()
    hint_if_waiting(job.input, "train")
    warn = (lambda msg: click.echo(f"train: {msg}", err=True)) if job.verbose else None
    samples, report = read_samples(job.input, input_name(job.input), cfg, vocab_size=vocab_size,
                                   skip_invalid=job.skip_invalid, stats=stats, warn=warn)
    summary.add("read", report.read)
    summary.add("trained", report.kept)
    for reason, n in report.skipped.most_common():
        summary.add("skipped", n, reason=reason)
    summary.absorb(stats)
    if report.truncated:
        summary.extra.append(f"{report.truncated} truncated to the token budget")
    if report.lags:
        summary.extra.append("versions behind: " + ", ".join(
            f"{lag}: {n}" for lag, n in sorted(report.lags.items())))
    if objective(cfg).grouped:
        summary.extra.append(f"{report.groups} groups ({report.groups_skipped} with equal "
                             f"rewards skipped)")
    return samples, report


def _nothing_to_train(cfg: TrainConfig, job: Job, summary: Summary, report: Any) -> None:
    why = ""
    if report.skipped.get("equal rewards in group"):
        why = " (every group had equal rewards: GRPO learns only from differences)"
    elif report.skipped.get("no reward"):
        why = " (no sample had a reward)"
    if job.allow_empty and not job.dry_run:
        if job.main_process:
            from .checkpoint import copy_model

            copy_model(resolve_model(cfg.model), cfg.out, cfg.to_dict())
        summary.extra.append(f"no samples to train on{why}: model in {cfg.out} unchanged")
        summary.print(job.quiet or not job.main_process)
        return
    summary.print(job.quiet or not job.main_process)
    raise TracewheelError(f"no samples to train on{why}; --allow-empty writes the starting "
                        f"model unchanged instead")


def _fit(cfg: TrainConfig, job: Job, samples: list, data_id: str, total: int,
         tag: dict | None = None) -> int:
    """Train; the optimizer steps taken. Metrics go to the output (and the trackers) step by
    step; if the reader goes away, training goes on and the model is still written."""
    if not job.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars: noise in a pipeline's log
    log = (lambda line: click.echo(f"train: {line}", err=True)) if job.show else (
        lambda line: None)
    trackers = Trackers(job.report_to if job.main_process else (),
                        job.report_dir or f"{cfg.out}.logs",
                        os.path.basename(os.path.normpath(cfg.out)), cfg.to_dict())
    done, reader_gone = 0, False
    bar = _progress_bar(total, job.show)
    with open_output(job.output if job.main_process else os.devnull) as out:
        def emit(metrics: dict) -> None:
            nonlocal done, reader_gone
            done += 1
            if tag:
                metrics = {**tag, **metrics}
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
            if job.ray_address:
                from .ray_train import run

                run(cfg, samples, data_id, address=job.ray_address, workers=job.ray_workers,
                    gpu=job.ray_gpu, emit=emit, log=log, verbose=job.verbose)
            else:
                from .trainer import Trainer

                Trainer(cfg, samples, fingerprint=data_id, emit=emit, log=log).setup().train()
        finally:
            if bar is not None:
                bar.close()
            trackers.finish()
    return done


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
