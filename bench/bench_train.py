"""train's packed SFT loop beside a plain padded loop (and TRL's SFTTrainer), same run.

The same samples (agent-like lengths, loss on the completion part), the same model (the
embedded model's architecture at random init: speed does not depend on the weights), the same
order and the same optimizer, each variant in its own process (for a clean peak memory):

- plain:  batches of B samples padded to the longest, attention mask, HF labels (-100 off the
          mask); B = token budget / mean sample length, so a batch holds as many real tokens as
          a packed row on average
- train:  the train tool's own loop (Trainer): one packed row per micro-batch of at most
          --max-tokens-per-batch tokens, attention kept within samples, logits only where a
          token is trained, and the tokens every sample of a row begins with computed once
- apart:  the same loop with that shared prefix computed once per sample, as before it was
- trl:    TRL's SFTTrainer on input_ids + assistant_masks (its defaults: padded batches of B),
          when trl is installed

Every sample begins with the same --shared-prefix tokens, as an agent's calls begin with its
system prompt and tool list (about 270 tokens in the demo's).

Printed: real (non-pad) sample tokens per second after the first step (warm-up), the ratio to the
plain loop, the padding fraction, peak memory (RSS on a CPU, allocated on a GPU), and on a GPU the
model FLOPs utilisation (6 N per token plus causal attention, over the device's bf16 peak).

    .venv/bin/python bench/bench_train.py                 # CPU: 4 of the 30 layers, ~3 min
    .venv/bin/python bench/bench_train.py --layers 30 --samples 512 --max-len 2048 \\
        --max-tokens-per-batch 16384                       # a GPU: the whole model
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0,
                    "L4": 121.0, "RTX 4090": 165.0}


def make_samples(n: int, max_len: int, vocab: int, seed: int, prefix: int = 0) -> list[dict]:
    """Agent-like samples: the same ``prefix`` tokens, then lognormal lengths (median about
    max_len / 4) of a prompt and a completion (the trained part, about 40% of the rest)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(max_len / 4), 0.6, n), 32, max_len).astype(int)
    shared = rng.integers(3, vocab, prefix).tolist()
    samples = []
    for i, length in enumerate(lengths):
        prompt = int(length * rng.uniform(0.4, 0.8))
        ids = shared + rng.integers(3, vocab, length).tolist()
        mask = [0] * (prefix + prompt) + [1] * (length - prompt)
        samples.append({"id": f"b{i}", "rollout_id": f"r{i}", "input_ids": ids,
                        "loss_mask": mask, "reward": 1.0})
    return samples


def build_model(workdir: Path, model: str, layers: int | None) -> Path:
    """The model's architecture at random init, saved with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tracewheel.models import resolve_model

    source = resolve_model(model)
    config = AutoConfig.from_pretrained(source)
    if layers:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    built = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    target = workdir / "model"
    built.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


def peak_memory_mib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_batches(samples: list[dict], order: list[int], batch: int) -> list[list[int]]:
    return [order[k:k + batch] for k in range(0, len(order), batch)]


def run_train(args: argparse.Namespace, samples: list[dict], device: str,
              share_prefix: bool = True) -> dict:
    from tracewheel_train.config import TrainConfig
    from tracewheel_train.data import to_train_sample
    from tracewheel_train.trainer import Trainer

    cfg = TrainConfig(model=str(args.model_dir), out=str(args.workdir / "out"),
                      max_tokens_per_batch=args.max_tokens_per_batch, lr=1e-5, seed=args.seed,
                      attn=args.attn, mixed_precision="bf16" if args.bf16 else "fp32")
    data = [to_train_sample(r, i + 1, cfg)[0] for i, r in enumerate(samples)]
    steps: list[dict] = []
    trainer = Trainer(cfg, data, emit=steps.append).setup()
    trainer.share_prefix = trainer.share_prefix and share_prefix
    trainer.save_model = lambda: None  # the benchmark measures training, not writing
    trainer.train()
    timed = steps[1:] or steps
    tokens = sum(s["tokens"] for s in timed)  # the samples': a shared prefix counts per sample
    seconds = sum(s["step_s"] for s in timed)
    padding = sum(s["padding_frac"] * s["tokens"] for s in timed)
    return {"tokens_per_s": tokens / seconds, "padding_frac": padding / (tokens + padding),
            "steps": len(steps), "attn": trainer.attn, "peak_mib": peak_memory_mib(device)}


def run_apart(args: argparse.Namespace, samples: list[dict], device: str) -> dict:
    return run_train(args, samples, device, share_prefix=False)


def run_plain(args: argparse.Namespace, samples: list[dict], device: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32,
                                                 attn_implementation="sdpa").to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.bf16)
    tokens = positions = 0
    seconds = 0.0
    for n, batch in enumerate(plain_batches(samples, args.order, args.batch)):
        width = max(len(samples[i]["input_ids"]) for i in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention = torch.zeros(len(batch), width, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, i in enumerate(batch):
            seq, mask = samples[i]["input_ids"], samples[i]["loss_mask"]
            ids[row, :len(seq)] = torch.tensor(seq)
            attention[row, :len(seq)] = 1
            labels[row, :len(seq)] = torch.where(torch.tensor(mask).bool(), torch.tensor(seq),
                                                 -100)
        _sync(device)
        started = time.perf_counter()
        with autocast:
            loss = model(input_ids=ids.to(device), attention_mask=attention.to(device),
                         labels=labels.to(device), use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if n:  # the first step warms up
            seconds += time.perf_counter() - started
            tokens += int(attention.sum())
            positions += attention.numel()
    return {"tokens_per_s": tokens / seconds, "padding_frac": 1 - tokens / positions,
            "steps": n + 1, "peak_mib": peak_memory_mib(device)}


def run_trl(args: argparse.Namespace, samples: list[dict], device: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    order = args.order
    rows = {"input_ids": [samples[i]["input_ids"] for i in order],
            "assistant_masks": [samples[i]["loss_mask"] for i in order]}
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    times: list[float] = []
    real: list[int] = []
    padded: list[int] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            _sync(device)
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            _sync(device)
            times.append(time.perf_counter() - self.started)

    batches = plain_batches(samples, order, args.batch)
    for batch in batches:
        lens = [len(samples[i]["input_ids"]) for i in batch]
        real.append(sum(lens))
        padded.append(max(lens) * len(lens))
    config = SFTConfig(output_dir=str(args.workdir / "trl"), per_device_train_batch_size=args.batch,
                       max_steps=len(batches), learning_rate=1e-5, max_grad_norm=1.0,
                       report_to=[], save_strategy="no", logging_steps=10**6, seed=args.seed,
                       bf16=args.bf16, use_cpu=device == "cpu", max_length=None,
                       dataloader_drop_last=False, optim="adamw_torch_fused",
                       disable_tqdm=True, data_seed=args.seed)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_dict(rows),
                         processing_class=AutoTokenizer.from_pretrained(args.model_dir),
                         callbacks=[Timer()])
    # Keep the benchmark's order (TRL shuffles by default): every variant sees the same batches.
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(
        trainer.train_dataset)
    trainer.train()
    return {"tokens_per_s": sum(real[1:]) / sum(times[1:]),
            "padding_frac": 1 - sum(real[1:]) / sum(padded[1:]), "steps": len(times),
            "peak_mib": peak_memory_mib(device)}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def model_flops_per_s(model_dir: Path, samples: list[dict], tokens_per_s: float) -> float:
    """Useful model FLOPs per second: 6 N per real token (N without the input embedding) plus
    causal attention, 6 * layers * width * (mean length seen by a token)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    d, layers = config.hidden_size, config.num_hidden_layers
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    per_layer = d * head_dim * (2 * heads + 2 * kv) + 3 * d * config.intermediate_size
    n = layers * per_layer + d * config.vocab_size  # the output projection counts
    lengths = np.array([len(s["input_ids"]) for s in samples], dtype=np.float64)
    mean_context = float((lengths ** 2).sum() / lengths.sum()) / 2
    return tokens_per_s * (6 * n + 12 * layers * heads * head_dim * mean_context)


def variant_main(args: argparse.Namespace) -> None:
    import torch

    samples = json.loads((args.workdir / "samples.json").read_text())
    args.order = json.loads((args.workdir / "order.json").read_text())
    args.model_dir = args.workdir / "model"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = {"plain": run_plain, "apart": run_apart, "train": run_train,
           "trl": run_trl}[args.variant]
    result = run(args, samples, device)
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="architecture (random init)")
    parser.add_argument("--layers", type=int, default=None,
                        help="layers to keep [default: all on a GPU, 4 on a CPU]")
    parser.add_argument("--samples", type=int, default=None,
                        help="[default: 512 on a GPU, 32 on a CPU]")
    parser.add_argument("--max-len", type=int, default=None,
                        help="longest sample [default: 2048 on a GPU, 384 on a CPU]")
    parser.add_argument("--max-tokens-per-batch", type=int, default=None,
                        help="train's token budget [default: 16384 on a GPU, 2048 on a CPU]")
    parser.add_argument("--shared-prefix", type=int, default=256,
                        help="tokens every sample begins with (an agent's system prompt)")
    parser.add_argument("--attn", default="auto", help="train's --attn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="of every variant; auto: bf16 autocast on a GPU, fp32 on a CPU")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak, where it is not known here")
    parser.add_argument("--variants", default="plain,apart,train,trl")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of all variants; each variant's best round counts (a shared "
                             "machine's noise only ever slows a run down)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return variant_main(args)

    import torch

    gpu = torch.cuda.is_available()
    bf16 = args.precision == "bf16" or (args.precision == "auto" and gpu)
    layers = args.layers or (None if gpu else 4)
    n = args.samples or (512 if gpu else 32)
    max_len = args.max_len or (2048 if gpu else 384)
    budget = args.max_tokens_per_batch or (16384 if gpu else 2048)
    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model_dir = build_model(workdir, args.model, layers)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    samples = make_samples(n, min(max_len, budget) - args.shared_prefix, config.vocab_size,
                           args.seed, args.shared_prefix)
    order = np.random.default_rng(args.seed).permutation(n).tolist()
    (workdir / "samples.json").write_text(json.dumps(samples))
    (workdir / "order.json").write_text(json.dumps(order))
    lengths = [len(s["input_ids"]) for s in samples]
    batch = max(1, round(budget / (sum(lengths) / n)))
    name = torch.cuda.get_device_name() if gpu else "cpu"
    print(f"bench_train: {n} samples, {sum(lengths)} tokens (lengths {min(lengths)}-"
          f"{max(lengths)}, mean {sum(lengths) / n:.0f}, the first {args.shared_prefix} the "
          f"same in all), {args.model} architecture with "
          f"{config.num_hidden_layers} layers at random init, {name}, "
          f"{'bf16 autocast' if bf16 else 'fp32'}; train packs <= {budget} tokens a row, the "
          f"padded loops take {batch} samples a batch", flush=True)

    variants = [v for v in args.variants.split(",") if v]
    if "trl" in variants:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("trl: not installed, skipped")
            variants.remove("trl")
    results: dict[str, dict] = {}
    for _ in range(args.repeat):
        for variant in variants:
            cmd = [sys.executable, __file__, "--variant", variant, "--workdir", str(workdir),
                   "--batch", str(batch), "--max-tokens-per-batch", str(budget), "--attn",
                   args.attn, "--seed", str(args.seed)] + (["--bf16"] if bf16 else [])
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if proc.returncode != 0:
                print(f"{variant}: failed\n{proc.stderr[-2000:]}")
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            best = results.get(variant)
            if best is None or result["tokens_per_s"] > best["tokens_per_s"]:
                results[variant] = result

    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    labels = {"plain": "plain loop (padded)", "apart": "train, prefix per sample",
              "train": "train (packed, prefix once)",
              "trl": "TRL SFTTrainer (padded)"}
    header = f"{'':28}{'tokens/s':>10}{'vs plain':>10}{'padding':>9}{'peak MiB':>10}"
    print(header + (f"{'MFU':>7}" if gpu and peak else ""))
    base = results.get("plain", {}).get("tokens_per_s")
    for variant, r in results.items():
        ratio = f"{r['tokens_per_s'] / base:9.2f}x" if base else f"{'-':>10}"
        line = (f"{labels[variant]:28}{r['tokens_per_s']:10.0f}{ratio}"
                f"{100 * r['padding_frac']:8.1f}%{r['peak_mib']:10.0f}")
        if gpu and peak:
            mfu = model_flops_per_s(model_dir, samples, r["tokens_per_s"]) / (peak * 1e12)
            line += f"{100 * mfu:6.1f}%"
        print(line)
    if "train" in results:
        print(f"train: attention {results['train']['attn']}, {results['train']['steps']} steps")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
