"""The two-agent example's learning signal per role: the Checker's reward is its balanced
accuracy, so a constant verdict earns what a coin earns, and the probe puts both kinds of
answer before it in every graded rollout. The workflow runs as rollout runs it, through the
recorder, against a canned model whose replies script each agent."""

from __future__ import annotations

import json
import random
import re

import pytest
from canned import CannedServer, chat_completion
from click.testing import CliRunner

from tracewheel_rollout.cli import main as rollout

from conftest import ROOT, load_script

WORKFLOW = f"{ROOT / 'examples' / 'solver_checker.py'}:run"
TASKS = "".join(json.dumps({"id": f"t{i}", "query": f"What is {i} + {i}?",
                            "reference": str(2 * i)}) + "\n" for i in range(1, 4))


def _text(content) -> str:
    return content if isinstance(content, str) else " ".join(
        part.get("text", "") for part in content)


def _team(checker) -> list[dict]:
    """Rollouts of the example with a Solver that is always right and a Checker that answers
    ``checker(proposed answer's boxed value, right value)``."""
    def reply(n: int):
        body = server.requests[n]["body"]
        system, text = (_text(body["messages"][k]["content"]) for k in (0, -1))
        if "You check the answer" in system:
            i = int(re.search(r"What is (\d+) \+", text)[1])
            proposed = re.findall(r"\\boxed\{([^}]*)\}", text)[-1]
            content = checker(proposed, str(2 * i))
        else:
            i = int(re.search(r"What is (\d+) \+", json.dumps(body["messages"]))[1])
            content = f"{i} + {i} = {2 * i}, so \\boxed{{{2 * i}}}."
        return 200, {}, chat_completion(content, token_ids=True)

    server = CannedServer(reply)
    with server:
        result = CliRunner().invoke(rollout, ["-w", WORKFLOW, "--base-url", server.base_url,
                                              "--model", "m", "--reward", "boxed"], input=TASKS)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("verdict, reward, rejections", [
    (lambda proposed, right: "ACCEPT", 0.5, [False, False]),
    # rejected twice, the Solver's rounds are up; then the probe
    (lambda proposed, right: "REJECT: no.", 0.5, [True, True, True]),
    (lambda proposed, right: "ACCEPT" if proposed == right else "REJECT: wrong sum.", 1.0,
     [False, True]),
], ids=["always-accept", "always-reject", "checks"])
def test_a_constant_checker_earns_what_a_coin_earns_and_checking_earns_more(
        verdict, reward, rejections):
    rollouts = _team(verdict)
    assert [r["status"] for r in rollouts] == ["ok"] * 3
    for r in rollouts:
        assert [v["rejected"] for v in r["metadata"]["verdicts"]] == rejections
        assert r["agent_rewards"] == {"Solver": 1.0, "Checker": reward}
        kinds = {v["answer_right"] for v in r["metadata"]["verdicts"]}
        assert kinds == {True, False}  # the probe: a wrong answer before it too
        assert r["metadata"]["verdicts"][-1]["round"] == "probe"
        assert r["metadata"]["solver_alone_right"] is True
        assert r["final"].endswith(f"\\boxed{{{r['reference']}}}.")  # the probe changes nothing


def test_a_coin_earns_half_in_expectation_and_a_constant_no_more():
    checker = load_script("examples/solver_checker.py")
    rng = random.Random(0)
    answers = [rng.random() < 0.9 for _ in range(4000)]  # a Solver right 90% of the time
    coin = [checker.balanced([{"answer_right": a, "rejected": rng.random() < 0.5},
                              {"answer_right": not a, "rejected": rng.random() < 0.5}])
            for a in answers]
    accept = [checker.balanced([{"answer_right": a, "rejected": False},
                                {"answer_right": not a, "rejected": False}]) for a in answers]
    assert sum(accept) / len(accept) == 0.5
    assert abs(sum(coin) / len(coin) - 0.5) < 0.02
    # the old reward, the share of right verdicts on the Solver's answers alone, paid a
    # constant ACCEPT the Solver's right share
    assert sum(answers) / len(answers) > 0.85
