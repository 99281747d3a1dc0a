"""train's GRPO loss against TRL's, the reference implementation, on the same batch.

The same per-token log-probabilities (with gradient), old log-probabilities, sampler
log-probabilities, reference log-probabilities, advantages and masks go to TRL's
``GRPOTrainer._compute_loss`` (its own code, called on a stand-in for the trainer that holds
the settings it reads and returns our log-probabilities instead of running a model) and to
``grpo_loss`` with the weights ``token_weights`` gives the step. Loss and gradient agree to
1e-6 for each pairing:

  TRL loss_type    train --loss-norm
  grpo             sequence   (each sample's token mean, then the mean over samples)
  bnpo, dapo       token      (the mean over the step's tokens)
  dr_grpo          constant   (the sum over tokens / (samples * max_completion_length))

and for each way train gets its old log-probabilities:

  train                                  TRL
  the sampler's (the default)            old = sampler, delta = tis_cap (dual clip)
  --recompute-logprobs, no sampler       old = recomputed, no importance correction
  --recompute-logprobs with the sampler  vLLM importance correction, ratio truncated at tis_cap
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tracewheel_train.data import TrainSample, token_weights
from tracewheel_train.losses import grpo_loss

GRPOTrainer = pytest.importorskip("trl.trainer.grpo_trainer").GRPOTrainer

LENGTHS = [7, 3, 5, 1, 6, 2]  # completion tokens of each sample; the batch is padded to 7
ADVANTAGES = [1.2, -0.8, 0.4, -1.5, 0.0, 0.7]
CLIP_LOW, CLIP_HIGH, TIS_CAP = 0.2, 0.28, 2.0
MAX_COMPLETION = 16
NORMS = {"grpo": "sequence", "bnpo": "token", "dapo": "token", "dr_grpo": "constant"}


class _Accelerator:
    """One process: TRL's reductions and gathers are the identity."""

    num_processes = 1
    sync_gradients = True

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x

    gather_for_metrics = gather


def _batch(seed: int) -> dict[str, torch.Tensor]:
    """Padded (B, T) tensors in float64: the policy's log-probabilities and three others near
    them, so that ratios fall on both sides of the clip range and past tis_cap."""
    g = torch.Generator().manual_seed(seed)
    b, t = len(LENGTHS), max(LENGTHS)
    mask = torch.zeros(b, t, dtype=torch.float64)
    for i, n in enumerate(LENGTHS):
        mask[i, :n] = 1

    def near(x: torch.Tensor, scale: float) -> torch.Tensor:
        return (x + scale * torch.randn(b, t, generator=g, dtype=torch.float64)).clamp(max=-1e-3)

    logp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3 - 0.05
    old, sampler = near(logp, 0.6), near(logp, 0.6)
    sampler[1, 0] = logp[1, 0] - 1  # A < 0 and a ratio of e to the sampler: the dual clip
    sampler[2, 1] = old[2, 1] - 1  # old / sampler = e: the importance weight truncated
    return {"logp": logp, "old": old, "sampler": sampler, "ref": near(logp, 0.3), "mask": mask,
            "advantages": torch.tensor(ADVANTAGES, dtype=torch.float64)}


def _trl_loss(batch: dict, loss_type: str, mode: str, beta: float
              ) -> tuple[float, torch.Tensor]:
    logp = batch["logp"].clone().requires_grad_()
    old = batch["sampler"] if mode == "sampler" else batch["old"]
    importance = mode == "recomputed+sampler"
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", loss_type=loss_type, beta=beta,
        epsilon_low=CLIP_LOW, epsilon_high=CLIP_HIGH, max_completion_length=MAX_COMPLETION,
        use_vllm=importance, vllm_importance_sampling_correction=importance,
        args=SimpleNamespace(use_bias_correction_kl=False, steps_per_generation=1,
                             delta=TIS_CAP if mode == "sampler" else None),
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        accelerator=_Accelerator(), _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list)})
    b, t = batch["mask"].shape
    inputs = {
        "prompt_ids": torch.zeros(b, 0, dtype=torch.long),
        "prompt_mask": torch.zeros(b, 0, dtype=torch.long),
        "completion_ids": torch.zeros(b, t, dtype=torch.long),
        "completion_mask": batch["mask"],
        "advantages": batch["advantages"],
        "old_per_token_logps": old,
        "ref_per_token_logps": batch["ref"],
        "importance_sampling_ratio": torch.exp(old - batch["sampler"]).clamp(max=TIS_CAP),
        "num_items_in_batch": batch["mask"].sum(),
    }
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    loss.backward()
    return loss.item(), logp.grad


def _our_loss(batch: dict, loss_norm: str, mode: str, beta: float
              ) -> tuple[float, torch.Tensor]:
    logp = batch["logp"].clone().requires_grad_()
    keep = batch["mask"].bool()
    # a prompt token, then the completion's n trained tokens
    samples = [TrainSample(id=f"s{i}", rollout=f"r{i}", group="g", reward=0.0, line=i + 1,
                           input_ids=np.zeros(n + 1, dtype=np.int32),
                           loss_mask=np.arange(n + 1) > 0, logprobs=None)
               for i, n in enumerate(LENGTHS)]
    weights = token_weights(samples, list(range(len(samples))), loss_norm,
                            norm_tokens=MAX_COMPLETION)
    per_token = torch.tensor([[weights[i]] * max(LENGTHS) for i in range(len(LENGTHS))],
                             dtype=torch.float64)
    advantages = batch["advantages"].unsqueeze(1).expand_as(logp)
    sampler = batch["sampler"][keep]
    old = sampler if mode == "sampler" else batch["old"][keep]
    parts = grpo_loss(logp[keep], per_token[keep], advantages[keep], old,
                      None if mode == "recomputed" else sampler,
                      recomputed=mode != "sampler", clip_low=CLIP_LOW, clip_high=CLIP_HIGH,
                      tis_cap=TIS_CAP, ref=batch["ref"][keep] if beta else None, kl_coef=beta)
    parts.loss.backward()
    return parts.loss.item(), logp.grad


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("mode", ["sampler", "recomputed", "recomputed+sampler"])
@pytest.mark.parametrize("loss_type", list(NORMS))
def test_grpo_loss_and_gradients_match_trl(loss_type, mode, beta):
    for seed in range(3):
        batch = _batch(seed)
        theirs, their_grad = _trl_loss(batch, loss_type, mode, beta)
        ours, our_grad = _our_loss(batch, NORMS[loss_type], mode, beta)
        assert ours == pytest.approx(theirs, abs=1e-6, rel=1e-6), seed
        torch.testing.assert_close(our_grad, their_grad, atol=1e-6, rtol=1e-6)
        assert our_grad.abs().sum() > 0  # the comparison is of something


def test_the_batches_reach_every_branch_of_the_loss():
    """Each seed's batch has tokens clipped on both sides and importance weights truncated at
    tis_cap (dual clip with the sampler's old, truncation with the recomputed), so the
    comparison above covers every branch."""
    for seed in range(3):
        b = _batch(seed)
        keep = b["mask"].bool()
        adv = b["advantages"].unsqueeze(1).expand_as(b["logp"])[keep]
        ratio = torch.exp(b["logp"] - b["old"])[keep]
        assert ((ratio < 1 - CLIP_LOW) & (adv < 0)).any(), seed
        assert ((ratio > 1 + CLIP_HIGH) & (adv > 0)).any(), seed
        ones = torch.ones_like(adv)
        for mode, old in (("sampler", b["sampler"]), ("recomputed+sampler", b["old"])):
            parts = grpo_loss(b["logp"][keep], ones, adv, old[keep], b["sampler"][keep],
                              recomputed=mode != "sampler", clip_low=CLIP_LOW,
                              clip_high=CLIP_HIGH, tis_cap=TIS_CAP)
            assert parts.truncated > 0, (seed, mode)
