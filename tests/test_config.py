"""--config files: option defaults below flags and environment; the seed's astuner section."""

import click
import pytest
from click.testing import CliRunner

from tracewheel.cli import common_options, tool_command
from tracewheel.client import endpoint_options


@tool_command("trace-filter")
@common_options
@endpoint_options
@click.option("--rubrics")
@click.option("--max-thread", type=int, default=4)
@click.option("--temperature", type=float, default=0.0)
def probe(**opts):
    """Prints the settings it got."""
    for key in ("base_url", "model", "rubrics", "max_thread", "temperature"):
        click.echo(f"{key}={opts[key]}")


def run(args, env=None):
    result = CliRunner().invoke(probe, args, env=env or {})
    return result, dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "flywheel.yaml"
    path.write_text(
        "model: from-top-level\n"
        "base-url: http://config/v1\n"
        "trace-filter:\n"
        "  max-thread: 7\n"
        "rollout:\n"
        "  samples: 4\n"
    )
    return path


def test_flags_beat_environment_beats_config(config):
    _, got = run(["--config", str(config)], env={"OPENAI_BASE_URL": ""})
    assert got["base_url"] == "http://config/v1" and got["model"] == "from-top-level"
    assert got["max_thread"] == "7"
    _, got = run(["--config", str(config)], env={"OPENAI_BASE_URL": "http://env/v1"})
    assert got["base_url"] == "http://env/v1"
    _, got = run(["--config", str(config), "--base-url", "http://flag/v1", "--max-thread", "2"],
                 env={"OPENAI_BASE_URL": "http://env/v1"})
    assert got["base_url"] == "http://flag/v1" and got["max_thread"] == "2"


def test_seed_astuner_section_is_understood(tmp_path):
    path = tmp_path / "seed.yaml"
    path.write_text(
        "astuner:\n"
        "  task_reader:\n"
        "    type: tracing\n"
        "    feedback_tracing:\n"
        "      base_url: ./database.sqlite\n"
        "      alien_llm_model: qwen3-235b-a22b-instruct-2507\n"
        "      alien_llm_response_length: 2048\n"
        "      filters:\n"
        "        - type: llm_evaluate\n"
        "          enabled: true\n"
        "          params:\n"
        "            custom_rubrics: |\n"
        "              1. Drop the task if the answer is wrong.\n"
        "            temperature: 0.5\n"
        "            max_thread: 16\n"
    )
    result, got = run(["--config", str(path)])
    assert result.exit_code == 0, result.output
    assert got["model"] == "qwen3-235b-a22b-instruct-2507"
    assert got["rubrics"].startswith("1. Drop the task")
    assert got["temperature"] == "0.5" and got["max_thread"] == "16"


def test_unknown_option_in_a_tool_section_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trace-filter:\n  max-threads: 3\n")
    result, _ = run(["--config", str(path)])
    assert result.exit_code == 1
    assert "unknown option(s): max-threads" in result.output


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: a\nbase-url: [unclosed\n")
    result, _ = run(["--config", str(path)])
    assert result.exit_code == 1
    assert f"{path}:" in result.output and "not valid YAML" in result.output


def test_yaml_is_never_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    result, _ = run(["--config", str(path)])
    assert result.exit_code == 1
    assert "not valid YAML" in result.output


def test_each_default_is_stated_once_all_the_way_down():
    """The objects a tool builds from its config have no defaults of their own (or read the
    config's), so a default changed in one place is the default everywhere: built from the
    configs' defaults, every inner object holds the configs' values."""
    import dataclasses
    import inspect

    from tracewheel.judge import JudgeSettings
    from tracewheel.models import MAX_MODEL_LEN
    from tracewheel.vllm import VLLMServer
    from tracewheel.vllm_cli import _command as vllm_command
    from tracewheel_rollout.config import RecordConfig, RunConfig
    from tracewheel_rollout.recorder import Recorder
    from tracewheel_rollout.run import _settings
    from tracewheel_rollout.runner import RunnerSettings
    from tracewheel_task_augment.config import GenerationConfig
    from tracewheel_task_augment.engine import AskSettings
    from tracewheel_trace_filter.config import FilterConfig

    for inner in (RunnerSettings, AskSettings):
        own = [f.name for f in dataclasses.fields(inner)
               if f.default is not dataclasses.MISSING
               or f.default_factory is not dataclasses.MISSING]
        assert own == [], f"{inner.__name__} states defaults of its own: {own}"

    run = RunConfig(workflow="examples/math_agent.py:run")
    built = _settings(run, {"upstream": "http://127.0.0.1:1/v1", "model": "m"})
    assert (built.per_task, built.jobs, built.timeout, built.seed, built.ordered) == \
        (run.per_task, run.jobs, run.rollout_timeout, run.seed, not run.unordered)
    assert built.sampling == {"temperature": run.temperature, "max_tokens": run.max_tokens}

    gen = GenerationConfig()
    asked = {f.name for f in dataclasses.fields(AskSettings)} - {"endpoint"}
    assert asked <= {f.name for f in dataclasses.fields(GenerationConfig)}  # one name each

    record = RecordConfig()
    signature = inspect.signature(Recorder.__init__).parameters
    for name in ("host", "retries", "timeout", "continuation"):
        assert signature[name].default == getattr(record, name), name

    judged = FilterConfig()
    judge = JudgeSettings(endpoint=None, rubrics=None)
    assert (judged.temperature, judged.max_tokens, judged.parse_retries) == \
        (judge.temperature, judge.max_tokens, judge.parse_retries)
    assert gen.parse_retries == judge.parse_retries

    served = {p.name: p.default for p in vllm_command.params}
    assert run.max_model_len == MAX_MODEL_LEN == served["max_model_len"] == \
        inspect.signature(VLLMServer.__init__).parameters["max_model_len"].default


def test_every_tool_that_asks_a_model_reads_the_same_options_into_the_same_fields():
    import dataclasses

    from tracewheel.cli import AskConfig, ask_config
    from tracewheel_task_augment.cli import main as task_augment
    from tracewheel_task_augment.config import GenerationConfig
    from tracewheel_trace_filter.cli import main as trace_filter
    from tracewheel_trace_filter.config import FilterConfig, LearnConfig

    asked = [f.name for f in dataclasses.fields(AskConfig)]
    for config in (FilterConfig, LearnConfig, GenerationConfig):
        names = [f.name for f in dataclasses.fields(config)]
        assert names[:len(asked)] == asked, config.__name__
        assert not [n for n in names if n.startswith("no_")], config.__name__  # positive names

    flags = ["--base-url", "http://127.0.0.1:1/v1", "--model", "m", "--max-thread", "3",
             "--no-structured", "--no-cache"]
    built = []
    for group, name in ((trace_filter, "filter"), (trace_filter, "learn-rubrics"),
                        (task_augment, "expand"), (task_augment, "paraphrase")):
        command = group.commands[name]
        params = command.make_context(name, list(flags), resilient_parsing=True).params
        built.append(ask_config(dict(params)))
    assert all(b == built[0] for b in built)
    assert built[0]["endpoint"].base_url == "http://127.0.0.1:1/v1"
    assert (built[0]["max_thread"], built[0]["structured"], built[0]["use_cache"]) == \
        (3, False, False)
