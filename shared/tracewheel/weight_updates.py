"""Live updates of a running vLLM server: new weights for the model it serves, and LoRA
adapters served beside it, without a restart; and the version of the weights it serves.

    load_weights("http://127.0.0.1:8000", "runs/demo/iter-1/ckpt", version="1")
    load_adapter("http://127.0.0.1:8000", "solver", "runs/demo/iter-1/adapters/solver")

The server must have been started for it (``VLLMServer(weight_updates=True)`` or
``python -m tracewheel.vllm --weight-updates``; for adapters ``lora_rank=R``): the launcher is
``tracewheel.vllm``, this module only talks to a server over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import TracewheelError
from .models import resolve_model

WEIGHT_UPDATE_TIMEOUT = 300.0  # seconds each step of a weight update may take


# What must agree for a checkpoint's weights to go into a server built for another's.
SHAPE_KEYS = ("architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "vocab_size", "tie_word_embeddings")


def call_route(url: str, route: str, body: dict | None, timeout: float, step: str,
               method: str = "POST") -> dict:
    """One request to a vLLM route; any failure is a TracewheelError naming the server and step."""
    data = None if method == "GET" else json.dumps(body or {}).encode()
    request = urllib.request.Request(url + route, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            text = resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:500]
        hint = (" (start it with weight updates: VLLMServer(weight_updates=True) or "
                "python -m tracewheel.vllm --weight-updates; for adapters, lora_rank=R or "
                "--lora-rank R)") if err.code == 404 else ""
        raise TracewheelError(f"vLLM at {url}: {step} failed: HTTP {err.code} {detail}{hint}"
                              ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TracewheelError(f"vLLM at {url}: {step} failed: {reason}") from None
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError:
        return {"text": text}


def server_root(url: str) -> str:
    """A server's root URL, with or without the /v1 its OpenAI routes are under."""
    return url.rstrip("/").removesuffix("/v1")


def served_model_dir(url: str, timeout: float = 30.0) -> Path | None:
    """The directory the server at ``url`` loaded its model from, where this machine has it."""
    models = call_route(url, "/v1/models", None, timeout, "listing its models", method="GET")
    for entry in models.get("data") or []:
        root = entry.get("root")
        if root and Path(root, "config.json").is_file():
            return Path(root)
    return None


def check_same_shape(served: Path, new: Path) -> None:
    """Refuse a checkpoint whose shapes differ from the served model's, naming the first."""
    def config(path: Path) -> dict:
        return json.loads((path / "config.json").read_text())

    was, now = config(served), config(new)
    for key in SHAPE_KEYS:
        if key in was and was.get(key) != now.get(key):
            raise TracewheelError(
                f"{new}: {key} is {now.get(key)!r} where the served model ({served}) has "
                f"{was[key]!r}; new weights must have the served model's shapes (serve this "
                f"model in a new server instead)")


def load_weights(url: str, model: str | os.PathLike, version: str | None = None, *,
                 timeout: float = WEIGHT_UPDATE_TIMEOUT) -> float:
    """Load the weights of checkpoint ``model`` into the vLLM server at ``url`` (its root, no
    /v1), without a restart; the seconds it took.

    Requests in flight finish on the old weights (the server pauses, waiting for them), those
    that arrive meanwhile wait and run on the new ones; the prefix cache, computed with the old
    weights, is dropped; ``version`` (default: the checkpoint's path) is what the server's
    /weight_info answers from then on. Where the load itself fails the server stays paused:
    it never answers with half-loaded weights, and the error says to stop it.
    """
    url = server_root(url)
    path = resolve_model(str(model)).resolve()
    check_safetensors(path)
    served = served_model_dir(url, timeout)
    if served is not None:
        check_same_shape(served, path)
    started = time.monotonic()
    call_route(url, "/pause?mode=wait", None, timeout, "pausing before the weight update")
    try:
        call_route(url, "/collective_rpc",
                   {"method": "tracewheel_reload_weights",
                    "kwargs": {"weights_path": str(path)}, "timeout": timeout},
                   timeout + 10, f"loading the weights of {path}")
    except TracewheelError as err:
        if "are loaded again" not in err.message:
            raise TracewheelError(f"{err.message}; the server stays paused (its weights may "
                                  f"be partly replaced): stop it") from None
        # The worker put the previous weights back: serve them, under their version.
        call_route(url, "/resume", None, timeout, "resuming on the previous weights")
        why = re.search(r"tracewheel: loading \S+ failed \((.*)\); the previous", err.message)
        raise TracewheelError(
            f"vLLM at {url}: loading the weights of {path} failed part way"
            f"{f' ({why.group(1)})' if why else ''}; the weights that served before are "
            f"back and serve again (version {weight_version(url, timeout)})") from None
    call_route(url, "/reset_prefix_cache", None, timeout, "dropping the prefix cache")
    call_route(url, "/update_weight_version", {"new_version": version or str(path)}, timeout,
               "setting the weight version")
    call_route(url, "/resume", None, timeout, "resuming after the weight update")
    return time.monotonic() - started


def check_safetensors(path: Path) -> None:
    """Refuse a checkpoint without weights, or with a *.safetensors file that is not one or is
    cut short (its header promises more bytes than it has): before the server pauses."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise TracewheelError(f"{path}: no *.safetensors weights to load")
    for file in files:
        size = file.stat().st_size
        try:
            with open(file, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                if not 2 <= length <= size - 8:
                    raise ValueError(f"a header of {length} bytes in a file of {size}")
                header = json.loads(f.read(length))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                      default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise TracewheelError(f"{file}: not a safetensors file ({err})") from None
        if 8 + length + end > size:
            raise TracewheelError(f"{file}: cut short: {size} bytes where its header needs "
                                  f"{8 + length + end}")


def load_adapter(url: str, name: str, adapter: str | os.PathLike, *,
                 timeout: float = WEIGHT_UPDATE_TIMEOUT) -> float:
    """Serve the LoRA adapter in directory ``adapter`` as model ``name`` on the vLLM server at
    ``url`` (its root), replacing the adapter of that name if there is one; the seconds it took.
    Where vLLM refuses it (a rank over the server's, another base), ``name`` keeps answering
    with the adapter it had."""
    url = server_root(url)
    path = Path(adapter).expanduser().resolve()
    config = path / "adapter_config.json"
    if not config.is_file():
        raise TracewheelError(f"{path}: not a LoRA adapter (no adapter_config.json)")
    try:
        rank = json.loads(config.read_text()).get("r")
    except ValueError as err:
        raise TracewheelError(f"{config}: not JSON ({err})") from None
    if not (path / "adapter_model.bin").is_file():
        check_safetensors(path)
    started = time.monotonic()
    call_route(url, "/v1/load_lora_adapter",
               {"lora_name": name, "lora_path": str(path), "load_inplace": True}, timeout,
               f"loading adapter {name!r} (rank {rank}) from {path}")
    return time.monotonic() - started


class OddVersionReply(TracewheelError):
    """The server has a /weight_info route, and what it answered there is not a version."""


def weight_version(url: str, timeout: float = 30.0) -> str | None:
    """The version the server at ``url`` says its weights are (None where it has none);
    OddVersionReply where its /weight_info answers something else than ``{"weight_version":
    ...}``."""
    url = server_root(url)
    reply = call_route(url, "/weight_info", None, timeout, "asking its weight version",
                       method="GET")
    version = reply.get("weight_version") if isinstance(reply, dict) else None
    if not isinstance(reply, dict) or "text" in reply or not isinstance(
            version, (str, int, type(None))):
        shown = "text" if isinstance(reply, dict) and "text" in reply else \
            f"a JSON {type(reply).__name__ if not isinstance(reply, dict) else 'object'}"
        raise OddVersionReply(f"{url}/weight_info answered {shown}, not a weight version")
    return None if version is None else str(version)
