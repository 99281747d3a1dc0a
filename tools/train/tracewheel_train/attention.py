"""Attention over packed rows: several samples share one row and never attend to each other.

A packed micro-batch is one row of concatenated samples with ``position_ids`` restarting at 0 for
each sample, and the sample boundaries as ``cu_seq_lens_q/k`` (cumulative lengths), the keyword
arguments transformers' flash-attention path reads for variable-length batches. Which kernel
keeps the samples apart:

- ``flash_attention_2`` (CUDA, with the flash-attn package): its variable-length kernel, given
  the boundaries; no compute is spent between samples.
- ``varlen_sdpa`` (registered here; the default elsewhere): PyTorch's scaled-dot-product
  attention run causally on each sample's slice of the row. Exact, no mask to build, and no
  compute spent between samples either.
- ``sdpa`` / ``eager``: transformers sees the restarting ``position_ids`` (with no attention mask
  and no cache) and builds a block-diagonal causal mask. Correct, but it spends attention compute
  on the masked blocks (quadratic in the row length), so it is only a fallback.

``varlen_sdpa`` also computes a *shared prefix* once: when every sample of a micro-batch begins
with the same tokens (the system prompt and tool list an agent sends in every call: about 270 of
a demo sample's 400 tokens), the row holds that prefix once, then each sample's remainder, and
each remainder attends to the prefix and causally to itself. The result and its gradients are
those of the samples apart (the prefix's keys and values collect every remainder's gradient);
only the repeated work is gone.
"""

from __future__ import annotations

import torch

VARLEN_SDPA = "varlen_sdpa"


def varlen_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cu_seq_lens_q: torch.Tensor | None = None,
    shared_prefix: int = 0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA on each packed sample's slice; plain SDPA when the row holds one sample.
    With ``shared_prefix`` P, the row's first segment is P tokens every later segment follows:
    those attend to all of it, then causally to themselves."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None or query.shape[0] != 1 or query.shape[2] == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    bounds = cu_seq_lens_q.tolist()
    # query/key/value are (batch, heads, seq, head_dim); outputs come back (batch, seq, heads, dim).
    p = shared_prefix
    outputs = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        if e <= s:
            continue
        if not p or s < p:
            outputs.append(sdpa_attention_forward(
                module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None,
                is_causal=True, **kwargs)[0])
            continue
        # Query i of the remainder sees the P prefix keys and remainder keys 0..i.
        mask = torch.ones(e - s, p + e - s, dtype=torch.bool, device=query.device).tril(p)
        outputs.append(sdpa_attention_forward(
            module, query[:, :, s:e], torch.cat([key[:, :, :p], key[:, :, s:e]], dim=2),
            torch.cat([value[:, :, :p], value[:, :, s:e]], dim=2), mask[None, None],
            is_causal=False, **kwargs)[0])
    return torch.cat(outputs, dim=1), None


def register() -> None:
    """Make ``attn_implementation="varlen_sdpa"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_forward)


def choose(requested: str, device_type: str) -> str:
    """The attention implementation for ``--attn auto``: flash-attention's varlen kernel where it
    is installed and a GPU is used, else ``varlen_sdpa``."""
    if requested != "auto":
        return requested
    if device_type == "cuda":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return VARLEN_SDPA
