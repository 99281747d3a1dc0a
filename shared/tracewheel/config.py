"""``--config FILE``: YAML option defaults. Flags win over the environment, which wins over the
file (click's own order: command line, envvar, default_map, default).

A config file holds any of:

- top-level keys named like options (``model: ...``, ``max-thread: 8``), for every tool that has
  such an option (others ignore them);
- a section per tool (``trace-filter: {model: ...}``), which wins over the top level and must name
  only that tool's options;
- the seed's ``astuner.task_reader.feedback_tracing`` section, translated to trace-filter's and
  trace-export's options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import TracewheelError

# The tools, written once (pyproject.toml's console scripts name the same commands).
TOOLS = ("trace-export", "trace-filter", "task-augment", "rollout", "ctx-merge", "train")


def tool_package(name: str) -> str:
    """The import name of a tool's package: ``trace-export`` is ``tracewheel_trace_export``."""
    return "tracewheel_" + name.replace("-", "_")


def tool_dir(name: str) -> Path:
    """A tool's folder in a checkout, ``tools/<name>/``: its README and its package."""
    import importlib.util

    spec = importlib.util.find_spec(tool_package(name))
    if spec is None or spec.origin is None:
        raise TracewheelError(f"no tool named {name!r}")
    return Path(spec.origin).parent.parent

# The seed's feedback_tracing keys, as this toolkit's option names.
_SEED_KEYS = {
    "base_url": "database",  # in the seed, base_url is the Studio database path
    "train_output_path": "output",
    "alien_llm_model": "model",
    "alien_llm_response_length": "max_tokens",
}
_SEED_FILTER_PARAMS = {
    "custom_rubrics": "rubrics",
    "temperature": "temperature",
    "print_reason": "print_reason",
    "max_thread": "max_thread",
}


def _option_name(key: str) -> str:
    return key.replace("-", "_")


def seed_section_to_options(section: dict[str, Any]) -> dict[str, Any]:
    """The seed's ``feedback_tracing`` section as option defaults."""
    options = {_SEED_KEYS[k]: v for k, v in section.items() if k in _SEED_KEYS}
    for flt in section.get("filters") or []:
        if isinstance(flt, dict) and flt.get("type") == "llm_evaluate" and flt.get("enabled", True):
            params = flt.get("params") or {}
            options.update({_SEED_FILTER_PARAMS[k]: v for k, v in params.items()
                            if k in _SEED_FILTER_PARAMS})
    return options


def load_config_defaults(path: str, tool: str, option_names: set[str]) -> dict[str, Any]:
    """The defaults ``path`` sets for ``tool``, whose options are ``option_names``."""
    import yaml  # 25 ms: only when --config is given

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise TracewheelError(f"{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TracewheelError(f"{path}: cannot read config: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TracewheelError(f"{path}: a config file must be a mapping of option names to values")

    defaults: dict[str, Any] = {}
    seed = (((data.get("astuner") or {}).get("task_reader") or {}).get("feedback_tracing"))
    if isinstance(seed, dict):
        defaults.update(seed_section_to_options(seed))
    for key, value in data.items():
        if key not in TOOLS and key != "astuner":
            defaults[_option_name(key)] = value
    section = data.get(tool) or {}
    if not isinstance(section, dict):
        raise TracewheelError(
            f"{path}: section '{tool}' must be a mapping of option names to values")
    unknown = sorted(k for k in section if _option_name(k) not in option_names)
    if unknown:
        raise TracewheelError(
            f"{path}: section '{tool}' names unknown option(s): {', '.join(unknown)} "
            f"(known: {', '.join(sorted(n.replace('_', '-') for n in option_names))})"
        )
    defaults.update({_option_name(k): v for k, v in section.items()})
    return {k: v for k, v in defaults.items() if k in option_names}
