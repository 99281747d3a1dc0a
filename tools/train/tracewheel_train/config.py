"""The whole configuration of a training run, as one dataclass with its defaults.

The command line fills it (``cli.py``); tests and other code build it directly. It is plain data,
so it travels to Ray workers as it is and is written beside every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# What a checkpoint must agree on with the run that resumes it: these shape the data order, the
# step boundaries and the objective. Others (--max-steps, --save-every, ...) may change.
RESUME_KEYS = ("model", "algo", "max_tokens_per_batch", "grad_accum", "epochs", "seed",
               "loss_norm", "norm_tokens", "adv_norm", "truncate", "lora_r",
               "recompute_logprobs", "min_reward")


@dataclass
class TrainConfig:
    # what to train, and where the result goes
    model: str = "smollm2-135m"        # the embedded model's name, or a Hugging Face model dir
    algo: str = "sft"                  # an objective of objectives.OBJECTIVES: sft or grpo
    out: str = "checkpoint"            # the final model directory (written atomically)
    checkpoint_dir: str | None = None  # step checkpoints; default "<out>.steps"

    # batches: one packed row per micro-batch, at most this many tokens
    max_tokens_per_batch: int = 4096
    grad_accum: int = 1                # micro-batches per optimizer step (per process)
    epochs: int = 1
    max_steps: int | None = None       # stop earlier than the epochs would
    truncate: bool = False             # cut samples longer than the budget instead of refusing

    # optimizer (AdamW) and learning rate
    lr: float = 1e-5
    lr_schedule: str = "constant"      # constant, linear or cosine (after warmup)
    warmup_steps: int = 0
    min_lr: float = 0.0                # where linear and cosine schedules end
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0         # 0 disables clipping (the norm is still reported)

    # loss normalisation: every trained token weighs the same ("token", DAPO), or every sample
    # ("sequence", GRPO's paper), or every rollout however many samples it was split into
    # ("rollout"), or each token 1 / (samples * norm_tokens) ("constant", Dr. GRPO: a long
    # answer's tokens weigh what a short one's do, and no step is scaled by its own lengths)
    loss_norm: str = "token"
    norm_tokens: int = 512             # the constant's length: the generation budget of a sample

    # GRPO
    adv_norm: str = "std"              # (r - mean) / (std + eps), or "mean": r - mean
    clip_low: float = 0.2              # PPO clip range: ratio in [1 - clip_low, 1 + clip_high]
    clip_high: float = 0.2
    recompute_logprobs: bool = False   # old logprobs from the trainer, not the rollout's sampler
    tis_cap: float = 2.0               # truncation of the sampler/trainer importance weight
    kl_coef: float = 0.0               # KL penalty to the frozen starting model (0: no reference)

    # SFT on rollouts: only samples whose reward reaches this (rejection sampling); None: all
    min_reward: float | None = None

    # rollouts of an older model (the flywheel's ASYNC=1): the version (an integer) of the model
    # trained here, and how many versions older a sample's `weight_version` may be; older
    # samples are dropped and counted
    policy_version: int | None = None
    max_lag: int | None = None

    # multi-agent: one LoRA adapter per policy, each trained on its agents' samples alone
    policies: dict[str, str] | None = None  # agent -> policy
    default_policy: str | None = None  # agents outside the map: this policy (frozen if unmapped)
    init_adapters: str | None = None   # an earlier policy run's --out: each policy starts there

    # model
    lora_r: int = 0                    # LoRA rank; 0 trains all weights
    init_adapter: str | None = None    # with LoRA: start from this adapter (its rank: lora_r)
    lora_alpha: float | None = None    # default 2 * lora_r
    lora_dropout: float = 0.0
    save_adapter: bool = False         # with LoRA: save the adapter, not merged weights
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"      # auto: see trainer.mixed_precision
    attn: str = "auto"                 # auto: flash_attention_2 where installed, else varlen_sdpa

    # run
    seed: int = 0
    save_every: int = 0                # steps between resumable checkpoints; 0: final model only
    keep_checkpoints: int = 2
    resume: str | None = None          # "latest" or a step checkpoint directory

    @property
    def steps_dir(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else Path(f"{self.out}.steps")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if "adam_betas" in values:
            values["adam_betas"] = tuple(values["adam_betas"])
        return cls(**values)
