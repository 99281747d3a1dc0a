"""The training objectives `--algo` chooses from, one entry of ``OBJECTIVES`` each: a new
objective is its loss function (losses.py) and one entry here.

What an entry says:
  help      the line `train --help` shows
  grouped   its samples are weighed against the others of their group: each needs a group and
            a reward (an ungraded sample is skipped and counted), gets an advantage
            (data.assign_advantages), and needs the sampler's logprobs unless
            --recompute-logprobs; the metrics report its clip and truncation fractions
  options   the TrainConfig fields that apply to this objective alone (the command line refuses
            them with another)
  loss      (logp, batch, cfg, reference) -> LossParts, ``reference()`` giving the frozen
            starting model's logprobs of the batch (a forward pass: call it only when needed)

No torch here: `train --help` reads this table, and the losses import torch when first called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import TrainConfig
    from .data import Batch
    from .losses import LossParts


def _sft(logp: Any, batch: Batch, cfg: TrainConfig, reference: Callable[[], Any]) -> LossParts:
    from .losses import sft_loss

    return sft_loss(logp, batch.weights, batch.sampler_logprobs)


def _grpo(logp: Any, batch: Batch, cfg: TrainConfig, reference: Callable[[], Any]) -> LossParts:
    from .losses import grpo_loss

    old = batch.old_logprobs if cfg.recompute_logprobs else batch.sampler_logprobs
    return grpo_loss(logp, batch.weights, batch.advantages, old, batch.sampler_logprobs,
                     recomputed=cfg.recompute_logprobs, clip_low=cfg.clip_low,
                     clip_high=cfg.clip_high, tis_cap=cfg.tis_cap,
                     ref=reference() if cfg.kl_coef > 0 else None, kl_coef=cfg.kl_coef)


@dataclass(frozen=True)
class Objective:
    help: str
    grouped: bool
    options: tuple[str, ...]
    loss: Callable[..., LossParts]


OBJECTIVES: dict[str, Objective] = {
    "sft": Objective("cross-entropy on loss_mask tokens (with --min-reward: rejection sampling)",
                     grouped=False, options=("min_reward",), loss=_sft),
    "grpo": Objective("group-relative clipped policy gradient with the rollouts' rewards and "
                      "logprobs", grouped=True,
                      options=("adv_norm", "clip_low", "clip_high", "recompute_logprobs",
                               "tis_cap", "kl_coef"), loss=_grpo),
}


def objective(cfg: TrainConfig) -> Objective:
    return OBJECTIVES[cfg.algo]
