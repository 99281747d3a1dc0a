"""The objectives, per trained token, as pure functions of tensors.

Notation, for trained token t of a sample with advantage A (GRPO):
  logp_t   the policy's log-probability now (with gradient)
  mu_t     the sampler's log-probability, recorded by the rollout (vLLM)
  old_t    the old log-probability of PPO: mu_t, or with --recompute-logprobs the trainer's own
           log-probability before the first update
  w_t      the token's normalisation weight (data.token_weights); a step's loss is sum w_t l_t

SFT:   l_t = -logp_t
GRPO:  r_t = exp(logp_t - old_t)
       l_t = -min(r_t A, clip(r_t, 1 - clip_low, 1 + clip_high) A) * is_t + kl_coef * k3_t
  with the truncated importance-sampling correction for the sampler/trainer mismatch:
       recomputed old: is_t = min(exp(old_t - mu_t), tis_cap), no gradient through it
       sampler's old:  is_t = 1, and the ratio itself is the importance weight: for A < 0 it is
                       truncated at tis_cap (l_t = min(l_t, -tis_cap A), dual-clip PPO)
  and the KL penalty to the frozen reference (Schulman's k3 estimator, unbiased and >= 0):
       k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1

The drift, kl_old: how far the policy moved from the one whose tokens it trains on, KL(old ||
now), estimated from those tokens (they were sampled by old): with r_t = exp(logp_t - old_t),
       kl_old_t = (r_t - 1) - log r_t  (>= 0; its mean over old's tokens is the KL, exactly)
A token the update pushed down (r_t -> 0) adds -log r_t, its log-probability lost: linear, where
the other orientation, exp(old_t - logp_t) - ..., is KL(now || old) estimated from samples it
was not drawn from, and grows as 1 / r_t (a token pushed from 0.5 to 1e-6 gave 5e5, not 12).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) for each row of ``logits`` (K, V), in float32; cross-entropy's fused
    log-softmax keeps memory at one copy of the logits."""
    return -F.cross_entropy(logits.float(), targets, reduction="none")


def k3(logp: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(pi || other) from samples of pi, ``logp`` their log-probability
    under pi (Schulman, 2020): unbiased where the tokens were drawn from pi."""
    d = other - logp
    return torch.exp(d) - d - 1


@dataclass
class LossParts:
    """A micro-batch's weighted loss and the sums behind its metrics (weights not applied)."""

    loss: torch.Tensor
    clipped: torch.Tensor  # tokens whose PPO clip was active
    truncated: torch.Tensor  # tokens whose importance weight was truncated at tis_cap
    kl_ref: torch.Tensor  # sum of k3 to the reference
    kl_old: torch.Tensor  # sum of KL(old || now) estimates (drift, sampler/trainer gap)


def sft_loss(logp: torch.Tensor, weights: torch.Tensor, sampler: torch.Tensor | None = None
             ) -> LossParts:
    """Cross-entropy; on the agent's own rollouts (``sampler``: their logprobs) also the drift
    from the policy that sampled them, as GRPO reports it."""
    zero = logp.new_zeros(())
    drift = zero if sampler is None else k3(sampler, logp.detach()).sum()
    return LossParts(loss=-(weights * logp).sum(), clipped=zero, truncated=zero, kl_ref=zero,
                     kl_old=drift)


def grpo_loss(
    logp: torch.Tensor,
    weights: torch.Tensor,
    advantages: torch.Tensor,
    old: torch.Tensor,
    sampler: torch.Tensor | None,
    *,
    recomputed: bool,
    clip_low: float,
    clip_high: float,
    tis_cap: float,
    ref: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> LossParts:
    """The clipped policy-gradient loss of one micro-batch (see the module docstring)."""
    ratio = torch.exp(logp - old)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    clip_active = (clipped < unclipped).detach()
    if recomputed and sampler is not None:
        is_weight = torch.exp(old - sampler).clamp(max=tis_cap).detach()
        truncated = (torch.exp(old - sampler) > tis_cap).detach()
        per_token = per_token * is_weight
    elif recomputed:
        truncated = torch.zeros_like(clip_active)
    else:
        bound = -tis_cap * advantages
        truncated = ((advantages < 0) & (per_token > bound)).detach()
        per_token = torch.where(truncated, bound, per_token)
    kl_ref = logp.new_zeros(())
    if ref is not None:
        kl = k3(logp, ref)
        kl_ref = kl.detach().sum()
        per_token = per_token + kl_coef * kl
    return LossParts(
        loss=(weights * per_token).sum(),
        clipped=clip_active.sum(), truncated=truncated.sum(), kl_ref=kl_ref,
        kl_old=k3(old, logp.detach()).sum())
