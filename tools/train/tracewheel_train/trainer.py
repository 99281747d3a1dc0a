"""The training loop: SFT or GRPO on packed samples, through Accelerate.

The same code runs in one process, under ``accelerate launch`` (DDP or FSDP on many GPUs), and
in each Ray Train worker (``ray_train.py``): Accelerate reads the process group it is given.

    train --model smollm2-135m --algo sft --out ckpt/ < samples.jsonl
    accelerate launch --num_processes 8 -m tracewheel_train --algo grpo --out ckpt/ s.jsonl
    train --ray auto --ray-workers 16 --algo grpo --out /shared/ckpt/ samples.jsonl

Shape (torchtune's): ``setup()`` builds the model, optimizer and step plan; ``train()`` is one
loop: learning rate, micro-batches with gradient accumulation, clip, step, log, checkpoint.
Every process plans the same steps from the same samples and seed, so the loss normalisation of
a step is known everywhere without communication; only the metrics are reduced.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tracewheel.errors import TracewheelError
from tracewheel.models import resolve_model

from . import attention
from .checkpoint import (
    MARKER,
    STATE,
    atomic_dir,
    check_adapter,
    find_resume_dir,
    prune,
    read_json,
    replace_dir,
    write_json,
)
from .config import RESUME_KEYS, TrainConfig
from .data import Batch, Step, TrainSample, collate, pack, plan_steps, reward_stats
from .losses import LossParts, target_logprobs
from .objectives import objective

# The metrics of a step, in the order they are written (None where they do not apply).
METRIC_KEYS = ("step", "epoch", "loss", "lr", "grad_norm", "tokens", "trained_tokens",
               "samples", "tokens_per_s", "padding_frac", "reward_mean", "reward_std", "kl",
               "kl_old", "clip_frac", "trunc_frac", "step_s")


def lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``total``: linear warmup, then constant,
    linear or cosine decay to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    if cfg.lr_schedule == "linear":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 - progress)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def mixed_precision(requested: str) -> str | None:
    """``auto``: what ``accelerate launch`` was told, else bf16 on a GPU that has it, and on a
    CPU where it does bf16 matmuls natively; float32 elsewhere. GRPO too: its first step's
    ratio then holds the bf16 trainer's gap to the float32 sampler, a few thousandths per token
    (``bench/bench_grpo.py`` measures it), well inside the clip range, and the loss's
    importance-sampling truncation bounds the rest."""
    if requested == "fp32":
        return "no"
    if requested != "auto":
        return requested
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None  # Accelerate reads it
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_native_bf16() else "no"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: there bf16 autocast trains ~1.6x faster than float32 (measured on a
    2-core Zen 5); elsewhere bf16 is emulated and slower than float32."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


class Trainer:
    """``Trainer(cfg, samples).setup()`` then ``.train()``; ``emit`` gets each step's metrics
    (on the main process only), ``log`` takes lines for stderr."""

    def __init__(self, cfg: TrainConfig, samples: list[TrainSample], *, fingerprint: str = "",
                 emit: Callable[[dict], None] | None = None,
                 log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.samples = samples
        self.fingerprint = fingerprint
        self.emit = emit or (lambda metrics: None)
        self.log = log or (lambda line: None)
        self.start_step = 0
        self.old_logprobs: list[np.ndarray] | None = None

    # ---- setup -------------------------------------------------------------------------------

    def setup(self) -> Trainer:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import set_seed

        cfg = self.cfg
        # Ray Train's CPU workers say so here; Accelerate wants cpu=True to use their gloo group.
        cpu = os.environ.get("ACCELERATE_TORCH_DEVICE") == "cpu"
        # Accelerate keeps its settings in a process-wide singleton: a second run in the same
        # process (a notebook, the tests) with other settings would be refused. The process
        # group (PartialState) is kept.
        AcceleratorState._reset_state()
        precision = mixed_precision(cfg.mixed_precision)
        self.accelerator = Accelerator(mixed_precision=precision, cpu=cpu)
        set_seed(cfg.seed)
        self.model_dir = resolve_model(cfg.model)
        self.model = self._setup_model()
        self.ref_model = self._setup_reference()
        self.optimizer = self._setup_optimizer(self.model)
        self.steps = self._setup_data()
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if cfg.resume:
            self.start_step = self.load_checkpoint(find_resume_dir(cfg.resume, cfg.steps_dir))
        elif cfg.recompute_logprobs:
            self.old_logprobs = self._recompute_old_logprobs()
        return self

    def _setup_model(self) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        cfg = self.cfg
        attention.register()
        self.attn = attention.choose(cfg.attn, self.accelerator.device.type)
        # Only varlen_sdpa knows a row with a shared prefix; it is exact, so always on there.
        self.share_prefix = self.attn == attention.VARLEN_SDPA
        # float32 master weights; Accelerate's autocast runs the matmuls in bf16 on a GPU.
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32,
                                                     attn_implementation=self.attn)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora_r and cfg.init_adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, check_adapter(cfg.init_adapter, cfg.lora_r),
                                              is_trainable=True)
        elif cfg.lora_r:
            from peft import get_peft_model

            model = get_peft_model(model, self.lora_config())
        return model

    def lora_config(self):
        return lora_config(self.cfg)

    def _setup_reference(self) -> torch.nn.Module | None:
        """The frozen starting model for the KL penalty. With LoRA there is no copy: the policy
        with its adapter switched off is the reference."""
        if self.cfg.kl_coef <= 0 or self.cfg.lora_r:
            return None
        from transformers import AutoModelForCausalLM

        dtype = torch.bfloat16 if self.accelerator.mixed_precision == "bf16" else torch.float32
        ref = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype,
                                                   attn_implementation=self.attn)
        ref.requires_grad_(False)
        return ref.eval().to(self.accelerator.device)

    def _setup_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        cfg = self.cfg
        params = [p for p in model.parameters() if p.requires_grad]
        # nanoGPT's rule: decay matrices, not biases and norms.
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        # The fused kernel: on a CPU too, where it is ~9x faster than the default loop.
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr,
                                 betas=cfg.adam_betas, fused=True)

    def _setup_data(self) -> list[Step]:
        steps = plan_steps(self.samples, self.cfg, self.accelerator.num_processes)
        # Processes with fewer micro-batches than the others in a step run a stand-in that
        # weighs nothing, so that every process takes part in every collective.
        self.stand_in = min(range(len(self.samples)), key=lambda i: len(self.samples[i]))
        return steps

    # ---- the forward pass and the loss --------------------------------------------------------

    def _batch(self, indices: list[int], step: Step) -> Batch:
        if not indices:
            indices, weights = [self.stand_in], [0.0]
        else:
            weights = [step.weights[i] for i in indices]
        old = [self.old_logprobs[i] for i in indices] if self.old_logprobs is not None else None
        return collate([self.samples[i] for i in indices], weights, old,
                       share_prefix=self.share_prefix).to(self.accelerator.device)

    @staticmethod
    def _logprobs(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Log-probabilities of the trained tokens. Logits are computed only where a trained
        token is predicted (``logits_to_keep``), not over the whole row."""
        out = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                    cu_seq_lens_q=batch.cu_seq_lens, cu_seq_lens_k=batch.cu_seq_lens,
                    max_length_q=batch.max_len, max_length_k=batch.max_len,
                    shared_prefix=batch.prefix, logits_to_keep=batch.keep, use_cache=False)
        return target_logprobs(out.logits[0], batch.targets)

    @torch.no_grad()
    def _reference_logprobs(self, batch: Batch) -> torch.Tensor:
        if self.ref_model is not None:
            return self._logprobs(self.ref_model, batch)
        with self.accelerator.unwrap_model(self.model).disable_adapter():
            return self._logprobs(self.model, batch)

    def _loss_step(self, batch: Batch) -> LossParts:
        cfg = self.cfg
        logp = self._logprobs(self.model, batch)
        return objective(cfg).loss(logp, batch, cfg, lambda: self._reference_logprobs(batch))

    @torch.no_grad()
    def _recompute_old_logprobs(self) -> list[np.ndarray]:
        """The starting policy's log-probability of every trained token (--recompute-logprobs),
        computed once before the first update, each process a share, then gathered."""
        from accelerate.utils import gather_object

        acc = self.accelerator
        lengths = [len(s) for s in self.samples]
        mbs = pack(list(range(len(self.samples))), lengths, self.cfg.max_tokens_per_batch)
        share = math.ceil(len(mbs) / acc.num_processes)
        mine = mbs[acc.process_index::acc.num_processes]
        mine += [[]] * (share - len(mine))
        found: dict[int, np.ndarray] = {}
        self.model.eval()
        for indices in mine:
            batch = collate([self.samples[i] for i in indices or [self.stand_in]],
                            [0.0] * max(1, len(indices)),
                            share_prefix=self.share_prefix).to(acc.device)
            logp = self._logprobs(self.model, batch).float().cpu().numpy()
            owner = batch.sample_of.cpu().numpy()
            positions = batch.positions.cpu().numpy()
            for k, i in enumerate(indices):
                full = np.zeros(lengths[i], dtype=np.float32)
                mask = owner == k
                full[positions[mask]] = logp[mask]
                found[i] = full
        self.model.train()
        merged: dict[int, np.ndarray] = {}
        for part in gather_object([found]):
            merged.update(part)
        return [merged[i] for i in range(len(self.samples))]

    # ---- the loop -----------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        cfg, acc = self.cfg, self.accelerator
        total = len(self.steps)
        self.model.train()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        last: dict[str, Any] = {}
        for n in range(self.start_step, total):
            step = self.steps[n]
            lr = lr_at(n, cfg, total)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            started = time.perf_counter()
            # loss, tokens, trained tokens, padding, clipped, truncated, kl_ref, kl_old
            sums = torch.zeros(8, dtype=torch.float64, device=acc.device)
            mine = step.batches[acc.process_index]
            for k, indices in enumerate(mine):
                batch = self._batch(indices, step)
                # Gradients are reduced across processes once, after the last micro-batch.
                with nullcontext() if k == len(mine) - 1 else acc.no_sync(self.model):
                    parts = self._loss_step(batch)
                    # Processes' gradients are averaged; the step's loss is their sum.
                    acc.backward(parts.loss * acc.num_processes)
                if indices:
                    sums += torch.stack([
                        parts.loss.detach().double(),
                        torch.tensor(batch.tokens, dtype=torch.float64, device=acc.device),
                        torch.tensor(len(batch.keep), dtype=torch.float64, device=acc.device),
                        torch.tensor(batch.padding, dtype=torch.float64, device=acc.device),
                        parts.clipped.double(), parts.truncated.double(),
                        parts.kl_ref.double(), parts.kl_old.double()])
            grad_norm = acc.clip_grad_norm_(trainable, cfg.max_grad_norm or float("inf"))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            totals = acc.reduce(sums, "sum").tolist()
            seconds = time.perf_counter() - started
            last = self._metrics(n, step, lr, float(grad_norm), totals, seconds)
            if acc.is_main_process:
                self.emit(last)
            if cfg.save_every and (n + 1) % cfg.save_every == 0 and n + 1 < total:
                self.save_checkpoint(n + 1)
        self.save_model()
        return last

    def _metrics(self, n: int, step: Step, lr: float, grad_norm: float, totals: list[float],
                 seconds: float) -> dict[str, Any]:
        loss, tokens, trained, padding, clipped, truncated, kl_ref, kl_old = totals
        grouped = objective(self.cfg).grouped
        # Drift is measured against the sampler: GRPO always has its logprobs, SFT on rollouts
        # has them (SFT on production traces does not).
        drift = grouped or all(s.logprobs is not None for s in self.samples)
        reward_mean, reward_std = reward_stats(step.rewards)
        values = {
            "step": n + 1, "epoch": step.epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "tokens": int(tokens), "trained_tokens": int(trained),
            "samples": len(step.samples()), "tokens_per_s": tokens / seconds,
            "padding_frac": padding / (tokens + padding) if tokens else 0.0,
            "reward_mean": reward_mean, "reward_std": reward_std,
            "kl": kl_ref / trained if grouped and self.cfg.kl_coef > 0 else None,
            "kl_old": kl_old / trained if drift else None,
            "clip_frac": clipped / trained if grouped else None,
            "trunc_frac": truncated / trained if grouped else None,
            "step_s": seconds,
        }
        return {k: values[k] for k in METRIC_KEYS}

    # ---- checkpoints --------------------------------------------------------------------------

    def _state(self, step: int) -> dict[str, Any]:
        return {"step": step, "total_steps": len(self.steps), "config": self.cfg.to_dict(),
                "data": self.fingerprint, "samples": len(self.samples),
                "processes": self.accelerator.num_processes}

    def save_checkpoint(self, step: int) -> Path:
        """A resumable checkpoint of everything after ``step`` steps, written whole or not at
        all; older ones beyond --keep-checkpoints are removed."""
        acc, root = self.accelerator, self.cfg.steps_dir
        final = root / f"step-{step:06d}"
        tmp = root / f".step-{step:06d}.tmp"
        if acc.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            if self.old_logprobs is not None:
                np.savez(tmp / "old_logprobs.npz", values=np.concatenate(self.old_logprobs))
            write_json(tmp / STATE, self._state(step))
            replace_dir(tmp, final)
            prune(root, self.cfg.keep_checkpoints)
            self.log(f"checkpoint {final}")
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> int:
        """Restore a step checkpoint; return the step to go on from. The checkpoint must come
        from the same input and the same options that shape the run."""
        state = read_json(path / STATE)
        if state.get("data") != self.fingerprint:
            raise TracewheelError(f"--resume {path}: the checkpoint was trained on other samples "
                                f"({state.get('samples')} samples, fingerprint "
                                f"{state.get('data')}; this input: {len(self.samples)} samples, "
                                f"{self.fingerprint})")
        saved = TrainConfig.from_dict(state["config"])
        changed = [k for k in RESUME_KEYS if getattr(saved, k) != getattr(self.cfg, k)]
        if changed:
            what = ", ".join(f"--{k.replace('_', '-')} {getattr(saved, k)!r} then, "
                             f"{getattr(self.cfg, k)!r} now" for k in changed)
            raise TracewheelError(f"--resume {path}: the run's options differ: {what}")
        if state.get("processes") != self.accelerator.num_processes:
            raise TracewheelError(f"--resume {path}: saved by {state.get('processes')} processes, "
                                f"resumed by {self.accelerator.num_processes}; the steps would "
                                f"differ")
        self.accelerator.load_state(str(path))
        if self.cfg.recompute_logprobs:
            flat = np.load(path / "old_logprobs.npz")["values"]
            cuts = np.cumsum([len(s) for s in self.samples])[:-1]
            self.old_logprobs = np.split(flat, cuts)
        self.log(f"resumed from {path} after step {state['step']}")
        return int(state["step"])

    def save_model(self) -> Path:
        """The final model directory (--out): full weights, LoRA merged into them, or the LoRA
        adapter (--save-adapter); the tokenizer and the base model's config beside them."""
        acc, cfg = self.accelerator, self.cfg
        acc.wait_for_everyone()
        state_dict = acc.get_state_dict(self.model)  # every process takes part (FSDP)
        out = Path(cfg.out)
        if acc.is_main_process:
            with atomic_dir(out) as tmp:
                self._write_model(tmp, acc.unwrap_model(self.model), state_dict)
            self.log(f"model written to {out}")
        acc.wait_for_everyone()
        return out

    def _write_model(self, tmp: Path, model: torch.nn.Module, state_dict: dict) -> None:
        from transformers import AutoConfig, AutoTokenizer

        cfg = self.cfg
        base_config = AutoConfig.from_pretrained(self.model_dir)
        dtype = base_config.dtype if isinstance(base_config.dtype, torch.dtype) else \
            getattr(torch, str(base_config.dtype or "float32"))
        if cfg.lora_r and cfg.save_adapter:
            model.save_pretrained(tmp, state_dict=state_dict)
        else:
            if cfg.lora_r:
                model, state_dict = self._merged(state_dict), None
            weights = state_dict if state_dict is not None else model.state_dict()
            weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
            model.save_pretrained(tmp, state_dict=weights)
            # The base model's own config: nothing of the training setup (attention kernel,
            # gradient checkpointing) leaks into what vLLM and transformers read.
            base_config.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(self.model_dir).save_pretrained(tmp)
        write_json(tmp / MARKER, {
            "tool": "train", "base_model": str(self.model_dir), "algo": cfg.algo,
            "steps": len(self.steps), "samples": len(self.samples), "data": self.fingerprint,
            "weights": "adapter" if cfg.lora_r and cfg.save_adapter else
                       ("merged" if cfg.lora_r else "full"),
            "config": cfg.to_dict()})

    def _merged(self, state_dict: dict) -> torch.nn.Module:
        """The base model with the trained LoRA adapter merged in, built on the CPU from the
        gathered state dict (works the same whether training was sharded or not)."""
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
        from transformers import AutoModelForCausalLM

        adapter = get_peft_model_state_dict(self.accelerator.unwrap_model(self.model),
                                            state_dict=state_dict)
        base = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32)
        peft_model = get_peft_model(base, self.lora_config())
        set_peft_model_state_dict(peft_model, adapter)
        return peft_model.merge_and_unload()


def lora_config(cfg: TrainConfig) -> Any:
    """peft's LoraConfig of a run: every linear layer, at --lora-r."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_r,
                      lora_dropout=cfg.lora_dropout, target_modules="all-linear",
                      task_type="CAUSAL_LM")
