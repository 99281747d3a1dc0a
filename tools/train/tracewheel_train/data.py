"""Samples in, packed micro-batches out.

- ``read_samples``: sample records (docs/architecture.md) to compact arrays, with every problem
  named by file and line, and GRPO's group-relative advantages.
- ``plan_steps``: the order of a run, fixed by the seed: rollouts shuffled each epoch, their
  samples packed into micro-batches of at most ``--max-tokens-per-batch`` tokens, micro-batches
  grouped into optimizer steps and spread over the processes, each trained token weighted by
  the loss normalisation.
- ``collate``: one micro-batch as tensors: a single row of concatenated samples, positions
  restarting at each sample, and the boundaries for the attention kernel (``attention.py``).

Token t of a sample is trained (its log-probability taken from the logits at t - 1) when
``loss_mask[t] == 1`` and t > 0: the first token has nothing before it to predict it from.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

import numpy as np
import torch

from tracewheel.errors import RecordError
from tracewheel.jsonl import ReadStats, read_jsonl
from tracewheel.records import validate_sample

from .config import TrainConfig
from .objectives import objective

ADV_EPS = 1e-4  # as TRL's GRPOTrainer: (r - mean) / (std + 1e-4)
PACK_WINDOW = 8  # micro-batches kept open while packing: fuller batches, order mostly kept
MIN_SHARED_PREFIX = 16  # a shorter common start is not worth a segment of its own


@dataclass
class TrainSample:
    """One sample as the trainer holds it (about 9 bytes a token)."""

    id: str
    rollout: str
    group: str | None
    reward: float | None
    line: int
    input_ids: np.ndarray  # int32
    loss_mask: np.ndarray  # bool
    logprobs: np.ndarray | None  # float32, the sampler's, 0.0 off the mask
    advantage: float = 0.0
    policy: str | None = None  # multi-agent: the policy its agent maps to

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained(self) -> int:
        """How many of its tokens are trained (mask 1, not the first token)."""
        return int(self.loss_mask[1:].sum())


@dataclass
class DataReport:
    """What reading saw; every record read is either trained or counted here with its reason."""

    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    truncated: int = 0
    groups: int = 0
    groups_skipped: int = 0
    lags: Counter = field(default_factory=Counter)  # kept samples by versions behind (--max-lag)
    tokens: int = 0
    trained_tokens: int = 0


class _Lines:
    """Iterates a stream's lines and remembers the number of the last one handed out."""

    def __init__(self, stream: Iterable[bytes]):
        self.stream = stream
        self.lineno = 0

    def __iter__(self) -> Iterator[bytes]:
        for line in self.stream:
            self.lineno += 1
            yield line


class _SampleCheck:
    """The shared sample contract, then what training needs; a RecordError names the line."""

    def __init__(self, cfg: TrainConfig, vocab_size: int | None, lines: _Lines):
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.lines = lines
        self.rollouts: dict[str, tuple[float | None, str | None, int]] = {}

    def __call__(self, record: dict) -> dict:
        validate_sample(record)
        cfg = self.cfg
        ids = record["input_ids"]
        low, high = min(ids), max(ids)
        if low < 0 or (self.vocab_size is not None and high >= self.vocab_size):
            bad = low if low < 0 else high
            raise RecordError(f"token id {bad} is outside the model's vocabulary "
                              f"(0..{self.vocab_size - 1 if self.vocab_size else '?'}): "
                              f"samples made with another tokenizer?")
        if len(ids) > cfg.max_tokens_per_batch and not cfg.truncate:
            raise RecordError(f"{len(ids)} tokens, more than --max-tokens-per-batch "
                              f"{cfg.max_tokens_per_batch} (raise it, or --truncate to cut such "
                              f"samples)")
        group = record.get("group") or record.get("task_id")
        if objective(cfg).grouped:
            if group is None:
                raise RecordError(f"no group (nor task_id): --algo {cfg.algo} compares the "
                                  f"rewards of a group")
            if record.get("logprobs") is None and not cfg.recompute_logprobs:
                raise RecordError(f"no logprobs: --algo {cfg.algo} takes the sampler's logprobs "
                                  f"as the old log-probabilities (or use --recompute-logprobs)")
        if cfg.max_lag is not None:
            record["_lag"] = sample_lag(record.get("weight_version"), cfg.policy_version)
        if cfg.policies is not None:
            agent = record.get("agent")
            policy = cfg.policies.get(agent) if agent is not None else None
            if policy is None and cfg.default_policy is None:
                raise RecordError(f"agent {agent!r} is not in the policy map (it names "
                                  f"{', '.join(sorted(cfg.policies))}) and there is no "
                                  f"--default-policy")
            record["_policy"] = policy or cfg.default_policy
        rollout = rollout_key(record)
        seen = self.rollouts.get(rollout)
        reward = record.get("reward")
        if seen is not None and (seen[0] != reward or seen[1] != group):
            what = "reward" if seen[0] != reward else "group"
            mine, theirs = (reward, seen[0]) if what == "reward" else (group, seen[1])
            raise RecordError(f"{what} {mine!r} differs from {theirs!r} given for the same "
                              f"rollout {rollout!r} on line {seen[2]}")
        if seen is None:
            self.rollouts[rollout] = (reward, group, self.lines.lineno)
        return record


def rollout_key(record: dict) -> str:
    """The trajectory a sample belongs to: its rollout; where the workflow rewarded each agent
    apart (``agent_rewards``), its rollout and agent, so each agent's reward stands alone."""
    rollout = str(record.get("rollout_id") or record["id"])
    agent = record.get("agent")
    if agent is not None and agent in (record.get("agent_rewards") or {}):
        return f"{rollout}#{agent}"
    return rollout


def sample_lag(version: object, policy_version: int | None) -> int:
    """How many versions the weights that sampled a sample (its ``weight_version``: a number,
    or numbers where they changed between its calls; the oldest counts) are behind
    ``policy_version``; a RecordError where it has none."""
    versions = version if isinstance(version, list) else [version]
    try:
        oldest = min(int(v) for v in versions)
    except (TypeError, ValueError):
        raise RecordError(f"weight_version {version!r} is not a version number: --max-lag "
                          f"needs the number of the weights that sampled each sample (rollout "
                          f"records it where vLLM serves /weight_info: the flywheel's one "
                          f"server)") from None
    if oldest > policy_version:
        raise RecordError(f"weight_version {oldest} is newer than --policy-version "
                          f"{policy_version}")
    return policy_version - oldest


def to_train_sample(record: dict, line: int, cfg: TrainConfig) -> tuple[TrainSample, bool]:
    """A validated record as compact arrays; truncated to the budget when asked (flagged)."""
    mask = record.get("loss_mask")
    if mask is None:
        mask = record["assistant_masks"]
    ids = np.asarray(record["input_ids"], dtype=np.int32)
    loss_mask = np.asarray(mask, dtype=bool)
    logprobs = record.get("logprobs")
    logprobs = None if logprobs is None else np.asarray(logprobs, dtype=np.float32)
    truncated = len(ids) > cfg.max_tokens_per_batch
    if truncated:
        n = cfg.max_tokens_per_batch
        ids, loss_mask = ids[:n], loss_mask[:n]
        logprobs = None if logprobs is None else logprobs[:n]
    policy = record.get("_policy")
    group = record.get("group") or record.get("task_id")
    if policy is not None and group is not None:
        group = f"{policy}/{group}"  # GRPO compares a policy's rollouts with its own only
    sample = TrainSample(
        id=str(record["id"]), rollout=rollout_key(record),
        group=group, reward=record.get("reward"), line=line, input_ids=ids,
        loss_mask=loss_mask, logprobs=logprobs, policy=policy)
    return sample, truncated


def read_samples(
    stream: IO[bytes],
    name: str,
    cfg: TrainConfig,
    *,
    vocab_size: int | None = None,
    skip_invalid: bool = False,
    stats: ReadStats | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[list[TrainSample], DataReport]:
    """Every trainable sample of ``stream`` (with GRPO advantages), and what was left out why."""
    lines = _Lines(stream)
    check = _SampleCheck(cfg, vocab_size, lines)
    report = DataReport()
    grouped = objective(cfg).grouped
    samples: list[TrainSample] = []
    for record in read_jsonl(lines, name, validate=check, skip_invalid=skip_invalid,
                             stats=stats, warn=warn):
        report.read += 1
        sample, truncated = to_train_sample(record, lines.lineno, cfg)
        report.truncated += truncated
        if cfg.policies is not None and sample.policy not in cfg.policies.values():
            # The default policy the map does not train (the frozen base, say).
            report.skipped[f"agent served by {sample.policy} (not trained)"] += 1
            continue
        lag = record.get("_lag")
        if lag is not None and lag > cfg.max_lag:
            # Sampled by weights too far behind the trained ones: their ratios would be clipped
            # or truncated away anyway, and the loop promised this bound.
            report.skipped["older than --max-lag"] += 1
            continue
        if sample.trained == 0:
            report.skipped["no trained tokens"] += 1
            continue
        if cfg.min_reward is not None and (sample.reward is None
                                           or sample.reward < cfg.min_reward):
            # Rejection sampling: the agent's own rollouts that fell short are not imitated.
            report.skipped["reward below --min-reward"] += 1
            continue
        if grouped and sample.reward is None:
            # An ungraded rollout (a task without a reference, a failed judge): nothing to
            # compare within its group. Counted, not an error: the flywheel meets them.
            report.skipped["no reward"] += 1
            continue
        samples.append(sample)
        if lag is not None:
            report.lags[lag] += 1
    if grouped:
        samples = assign_advantages(samples, cfg.adv_norm, report)
    report.kept = len(samples)
    report.tokens = sum(len(s) for s in samples)
    report.trained_tokens = sum(s.trained for s in samples)
    return samples, report


def group_advantages(rewards: dict[str, float], adv_norm: str) -> dict[str, float] | None:
    """Each rollout's advantage within its group; None when the group's rewards are all equal
    (no signal: every advantage would be 0). The std is the sample standard deviation."""
    values = np.asarray(list(rewards.values()), dtype=np.float64)
    if len(values) < 2 or float(values.max() - values.min()) <= 1e-9:
        return None
    centred = values - values.mean()
    if adv_norm == "std":
        centred = centred / (values.std(ddof=1) + ADV_EPS)
    return dict(zip(rewards, centred.tolist(), strict=True))


def assign_advantages(samples: list[TrainSample], adv_norm: str,
                      report: DataReport) -> list[TrainSample]:
    """Group-relative advantages over rollouts (a rollout split into several samples counts
    once); samples of groups whose rewards are all equal are dropped and counted."""
    groups: dict[str, dict[str, float]] = {}
    for s in samples:
        groups.setdefault(s.group, {})[s.rollout] = float(s.reward)
    advantages: dict[tuple[str, str], float] = {}
    for group, rewards in groups.items():
        adv = group_advantages(rewards, adv_norm)
        report.groups += 1
        if adv is None:
            report.groups_skipped += 1
            continue
        advantages.update({(group, r): a for r, a in adv.items()})
    kept = []
    for s in samples:
        adv = advantages.get((s.group, s.rollout))
        if adv is None:
            report.skipped["equal rewards in group"] += 1
            continue
        s.advantage = adv
        kept.append(s)
    return kept


def pack(order: list[int], lengths: list[int], budget: int,
         window: int = PACK_WINDOW) -> list[list[int]]:
    """Micro-batches of at most ``budget`` tokens, filled first-fit from a few open ones, so the
    batches come out full while the order stays close to ``order``."""
    done: list[list[int]] = []
    open_: list[tuple[int, list[int]]] = []
    for i in order:
        n = lengths[i]
        for k, (used, items) in enumerate(open_):
            if used + n <= budget:
                items.append(i)
                open_[k] = (used + n, items)
                break
        else:
            if len(open_) == window:
                done.append(open_.pop(0)[1])
            open_.append((n, [i]))
    done.extend(items for _, items in open_)
    return done


@dataclass
class Step:
    """One optimizer step: for each process, its micro-batches (sample indices; an empty list is
    a stand-in that keeps processes in lockstep and weighs nothing), and each sample's weight
    per trained token."""

    epoch: int
    batches: list[list[list[int]]]
    weights: dict[int, float]
    rewards: list[float]

    def samples(self) -> list[int]:
        return [i for rank in self.batches for mb in rank for i in mb]


def epoch_order(samples: list[TrainSample], seed: int, epoch: int) -> list[int]:
    """Sample indices with the rollouts shuffled (their own samples kept together, in order)."""
    by_rollout: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_rollout.setdefault(s.rollout, []).append(i)
    rollouts = list(by_rollout)
    rng = np.random.default_rng([seed, epoch])
    return [i for k in rng.permutation(len(rollouts)) for i in by_rollout[rollouts[k]]]


def token_weights(samples: list[TrainSample], indices: list[int], loss_norm: str, *,
                  norm_tokens: int | None = None) -> dict[int, float]:
    """The weight of each trained token of each sample in one step, so that the step's loss is
    the mean over tokens, samples, or rollouts (a rollout's samples pooled), or with
    ``constant`` the sum over tokens divided by samples * ``norm_tokens`` (Dr. GRPO)."""
    if loss_norm == "constant":
        if not norm_tokens:
            raise ValueError("loss_norm 'constant' needs norm_tokens")
        return {i: 1.0 / (len(indices) * norm_tokens) for i in indices}
    if loss_norm == "token":
        total = sum(samples[i].trained for i in indices)
        return {i: 1.0 / total for i in indices}
    if loss_norm == "sequence":
        return {i: 1.0 / (len(indices) * samples[i].trained) for i in indices}
    per_rollout = Counter()
    for i in indices:
        per_rollout[samples[i].rollout] += samples[i].trained
    return {i: 1.0 / (len(per_rollout) * per_rollout[samples[i].rollout]) for i in indices}


def spread(micro_batches: list[list[int]], lengths: list[int], world: int,
           per_rank: int) -> list[list[list[int]]]:
    """Micro-batches to processes, each process ``per_rank`` of them (empty stand-ins where
    there are too few), the largest first to the least loaded process."""
    load = [0] * world
    ranks: list[list[tuple[int, list[int]]]] = [[] for _ in range(world)]
    tokens = [sum(lengths[i] for i in mb) for mb in micro_batches]
    for k in sorted(range(len(micro_batches)), key=lambda k: -tokens[k]):
        r = min((r for r in range(world) if len(ranks[r]) < per_rank), key=lambda r: load[r])
        ranks[r].append((k, micro_batches[k]))
        load[r] += tokens[k]
    out = []
    for mine in ranks:
        mine.sort()
        out.append([mb for _, mb in mine] + [[] for _ in range(per_rank - len(mine))])
    return out


def plan_steps(samples: list[TrainSample], cfg: TrainConfig, world: int = 1) -> list[Step]:
    """Every optimizer step of the run, in order (all epochs; ``--max-steps`` cuts the list)."""
    lengths = [len(s) for s in samples]
    per_step = cfg.grad_accum * world
    steps: list[Step] = []
    for epoch in range(cfg.epochs):
        mbs = pack(epoch_order(samples, cfg.seed, epoch), lengths, cfg.max_tokens_per_batch)
        for k in range(0, len(mbs), per_step):
            chunk = mbs[k:k + per_step]
            indices = [i for mb in chunk for i in mb]
            rollouts = {samples[i].rollout: samples[i].reward for i in indices}
            steps.append(Step(
                epoch=epoch, batches=spread(chunk, lengths, world, cfg.grad_accum),
                weights=token_weights(samples, indices, cfg.loss_norm,
                                      norm_tokens=cfg.norm_tokens),
                rewards=[r for r in rollouts.values() if r is not None]))
    return steps[:cfg.max_steps] if cfg.max_steps else steps


@dataclass
class Batch:
    """One packed micro-batch as tensors. ``keep`` are the row positions whose logits predict a
    trained token; the per-token fields below it are aligned with ``keep``."""

    input_ids: torch.Tensor  # (1, T)
    position_ids: torch.Tensor  # (1, T)
    cu_seq_lens: torch.Tensor  # segment bounds: the shared prefix (if any), then each sample
    max_len: int
    prefix: int  # tokens at the row's start that every sample shares (0: none)
    keep: torch.Tensor  # (K,)
    targets: torch.Tensor  # (K,)
    positions: torch.Tensor  # (K,) each target's position within its sample
    weights: torch.Tensor  # (K,) loss weight of each token
    advantages: torch.Tensor  # (K,)
    sampler_logprobs: torch.Tensor | None  # (K,) from the rollout, where every sample has them
    old_logprobs: torch.Tensor | None  # (K,) recomputed, with --recompute-logprobs
    sample_of: torch.Tensor  # (K,) which sample of the micro-batch each token belongs to
    tokens: int  # the samples' tokens: a shared prefix counts once per sample, as if apart
    padding: int = 0

    def to(self, device: torch.device) -> Batch:
        moved = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in self.__dict__.items()}
        return Batch(**moved)


def shared_prefix(samples: list[TrainSample], least: int = MIN_SHARED_PREFIX) -> int:
    """How many tokens every sample begins with, up to the first trained token of each (the
    logit before it is then shared) and short of the shortest sample; 0 under ``least``."""
    if len(samples) < 2:
        return 0
    first = samples[0].input_ids
    p = min(len(s) for s in samples) - 1
    for s in samples:
        trained = np.flatnonzero(s.loss_mask[1:])
        if len(trained):
            p = min(p, int(trained[0]) + 1)
    for s in samples[1:]:
        differ = np.flatnonzero(first[:p] != s.input_ids[:p])
        if len(differ):
            p = int(differ[0])
    return p if p >= least else 0


def collate(samples: list[TrainSample], weights: list[float],
            old: list[np.ndarray] | None = None, share_prefix: bool = False) -> Batch:
    """Samples (with each one's token weight, and recomputed old logprobs) as one packed row.
    With ``share_prefix``, the tokens they all begin with are in the row once (attention.py)."""
    p = shared_prefix(samples) if share_prefix else 0
    rest = [len(s) - p for s in samples]
    ids = np.concatenate([samples[0].input_ids[:p]] + [s.input_ids[p:] for s in samples])
    positions = np.concatenate([np.arange(p)] + [np.arange(p, len(s)) for s in samples])
    bounds = np.cumsum([0] + ([p] if p else []) + rest)
    starts = bounds[1:] if p else bounds[:-1]  # where each sample's own tokens begin in the row
    keep, targets, w, adv, lp, old_lp, owner, at = [], [], [], [], [], [], [], []
    for k, s in enumerate(samples):
        t = np.flatnonzero(s.loss_mask[1:]) + 1  # trained token positions within the sample
        # The logit at sample position t - 1 predicts token t; before p it is the prefix's.
        keep.append(np.where(t - 1 < p, t - 1, starts[k] + t - 1 - p))
        targets.append(s.input_ids[t])
        at.append(t)
        w.append(np.full(len(t), weights[k], dtype=np.float32))
        adv.append(np.full(len(t), s.advantage, dtype=np.float32))
        owner.append(np.full(len(t), k))
        if s.logprobs is not None:
            lp.append(s.logprobs[t])
        if old is not None:
            old_lp.append(old[k][t])

    def cat(parts: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(parts)).to(dtype)

    return Batch(
        input_ids=torch.from_numpy(ids).long()[None],
        position_ids=torch.from_numpy(positions).long()[None],
        cu_seq_lens=torch.from_numpy(bounds).to(torch.int32),
        max_len=int(max(rest + [p])), prefix=p,
        keep=cat(keep, torch.long), targets=cat(targets, torch.long),
        positions=cat(at, torch.long),
        weights=cat(w, torch.float32), advantages=cat(adv, torch.float32),
        sampler_logprobs=cat(lp, torch.float32) if len(lp) == len(samples) else None,
        old_logprobs=cat(old_lp, torch.float32) if old is not None else None,
        sample_of=cat(owner, torch.long), tokens=sum(len(s) for s in samples))


def fingerprint(samples: list[TrainSample]) -> str:
    """A hash of what is trained (ids, lengths, advantages), to check a resumed run's input."""
    import hashlib

    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.id}\0{len(s)}\0{s.trained}\0{s.advantage:.6g}\n".encode())
    return h.hexdigest()[:16]


def reward_stats(rewards: list[float]) -> tuple[float | None, float | None]:
    if not rewards:
        return None, None
    mean = sum(rewards) / len(rewards)
    return mean, math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
