r"""Write the demo's production traffic: a Studio 1.0.9 database of MathAgent conversations, its
manifest, and the known-good answers a team would have for part of them.

    .venv/bin/python scripts/make_demo_db.py            # examples/demo.sqlite, .manifest.json,
                                                        # demo-references.jsonl

The database is made from a real one (``tests/fixtures/studio/studio-1.0.9_agentscope-1.0.21
.sqlite``, written by a real Studio server that real AgentScope 1.0.21 agents reported to): its
schema, and one of its runs (a MathAgent turn that calls ``execute_python_code`` once) as the
template of every row and span. Each run here copies that run's rows and span structure with
new ids, times and content: the problem, the agent's code, the tool's output and the final
answer. The problems are people's: GSM8K's training split (examples/gsm8k.py's production pool,
one- and two-step problems), with ``--template-share`` of them from examples/math_eval.py's
template family (another seed) where wanted; the manifest names each run's source. What
differs from the template on purpose: the system prompt and the tool are the demo workflow's
own (examples/math_agent.py), so the agent the loop trains is the agent production ran.

What production holds (fixed seed, so the files are the same on every run):

- single-turn runs where the agent calls its tool with the right expression, reads the value and
  answers it in ``\boxed{}``; some where its code has a slip (a wrong operand or operator) and
  the answer follows the wrong value;
- two-turn runs where the user answers: thanks, or "That's wrong, the answer is X" (right about a
  wrong answer, or mistaken about a right one); the agent then checks again with its tool.

References (``demo-references.jsonl``) exist for a share of the turns, chosen at random, as
ground truth a team would hold for part of its traffic; the manifest lists every run and turn
with its expected answer and whether the agent was right.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import random
import re
import shutil
import sqlite3
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL_DB = ROOT / "tests" / "fixtures" / "studio" / "studio-1.0.9_agentscope-1.0.21.sqlite"
TEMPLATE_RUN = "VjUPx3PGicPcuWa2tfoPJX"  # one MathAgent turn: a tool call, then the answer
TABLES = ("run_table", "reply_table", "message_table", "span_table")
PROJECT = "math-agent-prod"
MODEL = "math-agent-v1"
RUNS = 600  # a warm-up on ~300 of their answers learns about as much as on 800 (measured)
TEMPLATE_SHARE = 0.0  # of the runs: the template family; the rest are GSM8K problems
ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # Studio's short ids


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@dataclass
class Step:
    """One LLM call of a turn: its text, and the code it runs (None: the final answer)."""
    text: str
    code: str | None = None
    output: str | None = None


class Writer:
    """Builds the rows of one database, every id and time drawn from one seeded generator."""

    def __init__(self, template: dict[str, list[dict]], sys_prompt: str, tools: list[dict],
                 seed: int) -> None:
        self.t = template
        self.sys_prompt = sys_prompt
        self.tools = tools  # OpenAI format, as the formatter sends them
        self.rng = random.Random(seed)
        self.clock = datetime(2026, 11, 2, 8, 0, 0, tzinfo=timezone.utc)
        self.rows: dict[str, list[dict]] = {t: [] for t in TABLES}
        spans = template["span_table"]
        self.span_t = {"agent": spans[0], "format": spans[1], "chat": spans[2],
                       "tool": spans[3]}

    # ids and times
    def sid(self) -> str:
        return "".join(self.rng.choice(ALPHABET) for _ in range(22))

    def hexid(self, n: int) -> str:
        return "".join(self.rng.choice("0123456789abcdef") for _ in range(n))

    def tick(self, ms: float) -> datetime:
        self.clock += timedelta(milliseconds=ms)
        return self.clock

    @staticmethod
    def local(t: datetime) -> str:  # Studio's message and run times: naive, milliseconds
        return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}"

    @staticmethod
    def ns(t: datetime) -> str:
        return str(int(t.timestamp() * 1_000_000) * 1000)

    # AgentScope's repr of a Msg, as it is stored in span attributes
    @staticmethod
    def msg_repr(mid: str, name: str, content, role: str, ts: str, invocation: str) -> str:
        return (f"Msg(id={mid!r}, name={name!r}, content={content!r}, role={role!r}, "
                f"metadata={{}}, timestamp={ts!r}, invocation_id={invocation!r})")

    def span(self, kind: str, trace: str, parent: str, start: datetime, end: datetime,
             run_id: str, attrs: dict, **columns) -> str:
        row = copy.deepcopy(self.span_t[kind])
        span_id = self.hexid(16)
        row.update(id=span_id, spanId=span_id, traceId=trace, parentSpanId=parent,
                   startTimeUnixNano=self.ns(start), endTimeUnixNano=self.ns(end),
                   attributes=json.dumps(attrs, ensure_ascii=False), conversationId=run_id,
                   latencyNs=float((end - start).total_seconds() * 1e9), **columns)
        self.rows["span_table"].append(row)
        return span_id

    def run(self, run_name: str, turns: list[tuple[str, list[Step]]]) -> str:
        """A run of one MathAgent conversation: each turn a user text and the agent's steps."""
        run_id = self.sid()
        start = self.tick(self.rng.uniform(20_000, 400_000))
        self.rows["run_table"].append({
            **self.t["run_table"][0], "id": run_id, "project": PROJECT, "name": run_name,
            "timestamp": self.local(start), "pid": self.rng.randint(2000, 60000)})
        system = {"role": "system", "name": "system",
                  "content": [{"type": "text", "text": self.sys_prompt}]}
        memory: list[dict] = []  # the agent's formatted memory, across turns
        reprs: list[str] = []    # the same, as the formatter's Msg reprs
        sys_repr = self.msg_repr(self.sid(), "system", self.sys_prompt, "system",
                                 self.local(start), "None")
        for user_text, steps in turns:
            self._turn(run_id, user_text, steps, system, memory, sys_repr, reprs)
        return run_id

    def _turn(self, run_id: str, user_text: str, steps: list[Step], system: dict,
              memory: list[dict], sys_repr: str, reprs: list[str]) -> None:
        user_at = self.tick(self.rng.uniform(2_000, 30_000))
        user_reply, agent_reply, user_mid = self.sid(), self.sid(), self.sid()
        self.rows["reply_table"].append({"replyId": user_reply, "replyRole": "user",
                                         "replyName": "user", "createdAt": self.local(user_at),
                                         "finishedAt": None, "run_id": run_id})
        self.rows["message_table"].append({
            "id": user_mid, "run_id": run_id, "replyId": user_reply, "speech": None,
            "msg": json.dumps({"name": "user", "role": "user", "content": user_text,
                               "metadata": {}, "timestamp": self.local(user_at)},
                              ensure_ascii=False, separators=(",", ":"))})
        user_repr = self.msg_repr(user_mid, "user", user_text, "user", self.local(user_at),
                                  "None")
        memory.append({"role": "user", "name": "user",
                       "content": [{"type": "text", "text": user_text}]})
        reprs.append(user_repr)

        trace = self.hexid(32)
        agent_start = self.tick(30)
        agent_span = self.hexid(16)  # its row is written last, when its end is known
        final_text, final_mid, final_invocation = "", "", ""
        for step in steps:
            fmt_start = self.tick(0.3)
            formatted = [system, *memory]
            self.span("format", trace, agent_span, fmt_start, self.tick(0.1), run_id,
                      self._format_attrs(run_id, [sys_repr, *reprs], formatted))
            chat_start = self.tick(0.2)
            out_tokens = max(8, len(step.text + (step.code or "")) // 3)
            chat_end = self.tick(self.rng.uniform(300, 1500))
            response_id = "chatcmpl-" + self.hexid(20)
            call_id = "call_" + self.hexid(24) if step.code else None
            in_tokens = sum(len(json.dumps(m)) for m in formatted) // 4
            self.span("chat", trace, agent_span, chat_start, chat_end, run_id,
                      self._chat_attrs(run_id, formatted, step, call_id, response_id,
                                       chat_end, in_tokens, out_tokens),
                      model=MODEL, inputTokens=in_tokens, outputTokens=out_tokens,
                      totalTokens=in_tokens + out_tokens, name=f"chat {MODEL}")
            mid = self.sid()
            blocks = [{"text": step.text, "type": "text"}]
            if step.code is None:
                final_text, final_mid, final_invocation = step.text, mid, response_id
                self.rows["message_table"].append(self._message(
                    mid, run_id, agent_reply, "MathAgent", "assistant", blocks, chat_end))
                memory.append({"role": "assistant", "name": "MathAgent",
                               "content": [{"type": "text", "text": step.text}]})
                reprs.append(self.msg_repr(mid, "MathAgent", [{"type": "text",
                                                               "text": step.text}],
                                           "assistant", self.local(chat_end), response_id))
                continue
            use = {"type": "tool_use", "id": call_id, "name": "execute_python_code",
                   "input": {"code": step.code}}
            self.rows["message_table"].append(self._message(
                mid, run_id, agent_reply, "MathAgent", "assistant", [*blocks, use], chat_end))
            tool_start = self.tick(0.5)
            tool_end = self.tick(self.rng.uniform(20, 80))
            self.span("tool", trace, agent_span, tool_start, tool_end, run_id,
                      self._tool_attrs(run_id, use, step.output, tool_end))
            result = {"type": "tool_result", "id": call_id, "name": "execute_python_code",
                      "output": [{"text": step.output, "type": "text"}]}
            self.rows["message_table"].append(self._message(
                self.sid(), run_id, agent_reply, "system", "system", [result], tool_end))
            memory.append({"role": "assistant", "name": "MathAgent",
                           "content": [{"type": "text", "text": step.text}],
                           "tool_calls": [{"id": call_id, "type": "function", "function": {
                               "name": "execute_python_code",
                               "arguments": json.dumps({"code": step.code})}}]})
            memory.append({"role": "tool", "tool_call_id": call_id, "content": step.output,
                           "name": "execute_python_code"})
            reprs.append(self.msg_repr(mid, "MathAgent", [{"type": "text", "text": step.text},
                                                          use], "assistant",
                                       self.local(chat_end), response_id))
            reprs.append(self.msg_repr(self.sid(), "system", [result], "system",
                                       self.local(tool_end), "None"))
        agent_end = self.tick(5)
        self.rows["reply_table"].append({"replyId": agent_reply, "replyRole": "assistant",
                                         "replyName": "MathAgent",
                                         "createdAt": self.local(chat_end),
                                         "finishedAt": None, "run_id": run_id})
        attrs = copy.deepcopy(json.loads(self.span_t["agent"]["attributes"]))
        g = attrs["gen_ai"]
        g["agent"]["id"] = self.sid()
        g["input"]["messages"] = [{"role": "user", "parts": [{"type": "text",
                                                               "content": user_text}],
                                   "name": "user", "finish_reason": "stop"}]
        g["conversation"]["id"] = run_id
        g["output"]["messages"] = [{"role": "assistant", "parts": [{"type": "text",
                                                                     "content": final_text}],
                                    "name": "MathAgent", "finish_reason": "stop"}]
        fn = attrs["agentscope"]["function"]
        fn["input"]["kwargs"]["msg"] = user_repr
        fn["output"] = self.msg_repr(final_mid, "MathAgent", [{"type": "text",
                                                               "text": final_text}],
                                     "assistant", self.local(agent_end), final_invocation)
        row = copy.deepcopy(self.span_t["agent"])
        row.update(id=agent_span, spanId=agent_span, traceId=trace, parentSpanId="",
                   startTimeUnixNano=self.ns(agent_start), endTimeUnixNano=self.ns(agent_end),
                   attributes=json.dumps(attrs, ensure_ascii=False), conversationId=run_id,
                   latencyNs=float((agent_end - agent_start).total_seconds() * 1e9))
        self.rows["span_table"].append(row)

    def _message(self, mid: str, run_id: str, reply: str, name: str, role: str,
                 content: list[dict], at: datetime) -> dict:
        return {"id": mid, "run_id": run_id, "replyId": reply, "speech": None,
                "msg": json.dumps({"name": name, "role": role, "content": content,
                                   "metadata": {}, "timestamp": self.local(at)},
                                  ensure_ascii=False, separators=(",", ":"))}

    def _format_attrs(self, run_id: str, reprs: list[str], formatted: list[dict]) -> dict:
        attrs = copy.deepcopy(json.loads(self.span_t["format"]["attributes"]))
        attrs["gen_ai"]["conversation"]["id"] = run_id
        attrs["agentscope"]["format"]["count"] = len(formatted)
        attrs["agentscope"]["function"]["input"]["kwargs"]["msgs"] = reprs
        attrs["agentscope"]["function"]["output"] = copy.deepcopy(formatted)
        return attrs

    def _chat_attrs(self, run_id: str, formatted: list[dict], step: Step, call_id: str | None,
                    response_id: str, end: datetime, in_tokens: int, out_tokens: int) -> dict:
        attrs = copy.deepcopy(json.loads(self.span_t["chat"]["attributes"]))
        g = attrs["gen_ai"]
        g["request"]["model"] = MODEL
        g["tool"]["definitions"] = [{"type": "function", **t["function"]} for t in self.tools]
        g["conversation"]["id"] = run_id
        g["response"]["id"] = response_id
        g["usage"] = {"input_tokens": in_tokens, "output_tokens": out_tokens}
        parts = [{"type": "text", "content": step.text}]
        content = [{"type": "text", "text": step.text}]
        if step.code is not None:
            parts.append({"type": "tool_call", "id": call_id, "name": "execute_python_code",
                          "arguments": {"code": step.code}})
            content.append({"type": "tool_use", "id": call_id, "name": "execute_python_code",
                            "input": {"code": step.code}})
        g["output"]["messages"] = [{"role": "assistant", "parts": parts,
                                    "finish_reason": "stop"}]
        fn = attrs["agentscope"]["function"]
        fn["input"]["args"] = [copy.deepcopy(formatted)]
        fn["input"]["kwargs"]["tools"] = copy.deepcopy(self.tools)
        usage = fn["output"]["usage"]
        usage.update(input_tokens=in_tokens, output_tokens=out_tokens,
                     time=round(self.rng.uniform(0.3, 1.5), 6),
                     metadata=f"CompletionUsage(completion_tokens={out_tokens}, prompt_tokens="
                              f"{in_tokens}, total_tokens={in_tokens + out_tokens}, "
                              f"completion_tokens_details=None, prompt_tokens_details=None)")
        fn["output"].update(content=content, id=response_id, created_at=self.local(end))
        return attrs

    def _tool_attrs(self, run_id: str, use: dict, output: str, end: datetime) -> dict:
        attrs = copy.deepcopy(json.loads(self.span_t["tool"]["attributes"]))
        response = (f"ToolResponse(content={[{'type': 'text', 'text': output}]!r}, "
                    f"metadata=None, stream=False, is_last=True, is_interrupted=False, "
                    f"id={self.local(end) + '_' + self.hexid(6)!r})")
        tool = attrs["gen_ai"]["tool"]
        tool["call"] = {"id": use["id"], "arguments": use["input"], "result": response}
        tool["description"] = self.tools[0]["function"]["description"]
        attrs["gen_ai"]["conversation"]["id"] = run_id
        attrs["agentscope"]["function"]["input"]["tool_call"] = use
        attrs["agentscope"]["function"]["output"] = response
        return attrs


def answer_text(printed: str) -> str:
    """The value a program printed, as the agent answers it: ``52.0`` is 52."""
    value = printed.strip().splitlines()[-1]
    return value[:-2] if value.endswith(".0") else value


def _slip(problem, rng: random.Random, run) -> tuple[str, str]:
    """The problem's code with one slip in one line (an operand off, or an operator swapped),
    and the value it prints, which differs from the answer."""
    lines = problem.code.splitlines()
    while True:
        k = rng.randrange(len(lines))
        head, sep, expr = lines[k].rpartition(" = ") if " = " in lines[k] else \
            ("print(", "", lines[k][len("print("):-1])
        tokens = expr.split(" ")
        i = rng.randrange(len(tokens))
        if re.fullmatch(r"\d+", tokens[i]):
            tokens[i] = str(int(tokens[i]) + rng.choice([-10, -2, -1, 1, 2, 10]))
        elif tokens[i] in ("+", "-"):
            tokens[i] = "-" if tokens[i] == "+" else "+"
        else:
            continue
        wrong = " ".join(tokens)
        line = f"{head}{sep}{wrong}" if sep else f"print({wrong})"
        code = "\n".join([*lines[:k], line, *lines[k + 1:]])
        try:
            value = answer_text(run(code))
        except (ValueError, ZeroDivisionError, OverflowError):
            continue
        if value != str(problem.answer) and not value.startswith("-"):
            return code, value


def mix(n_runs: int, seed: int, families: list, template_share: float, max_steps: int) -> list:
    """``n_runs`` problems: GSM8K's production pool (problems people wrote) with a share of the
    template family's, shuffled together."""
    gsm8k, templates = families
    n_templates = round(n_runs * template_share)
    chosen = [*gsm8k.problems(n_runs - n_templates, seed, pool="production",
                              max_steps=max_steps),
              *templates.problems(n_templates, seed)]
    random.Random(seed).shuffle(chosen)
    return chosen


def conversations(problems: list, seed: int, run) -> list[dict]:
    """The runs' content: each a list of turns (user text, steps) and its ground truth."""
    rng = random.Random(seed)
    runs = []
    for problem in problems:
        roll = rng.random()
        wrong = roll < 0.15
        code, printed = problem.code, run(problem.code).strip()
        value = str(problem.answer)
        if wrong:
            code, value = _slip(problem, rng, run)
            printed = run(code).strip()
        working = problem.working.replace(str(problem.answer), value) if wrong else \
            problem.working
        intro = rng.choice(["Let me compute it.", "I will compute this with Python.",
                            "Let me calculate.", "I'll run the arithmetic."])
        first = [Step(intro, code, printed), Step(f"{working}\n\n\\boxed{{{value}}}")]
        turns = [{"user": problem.query, "steps": first, "expected": str(problem.answer),
                  "right": not wrong}]
        feedback = rng.random()
        if feedback < 0.12:
            turns.append({"user": rng.choice(["Thanks!", "Thank you, that's right.",
                                              "Great, thanks."]),
                          "steps": [Step("You're welcome! Ask me anytime.")],
                          "expected": None, "right": None})
        elif feedback < 0.24:
            # The user pushes back: rightly on a wrong answer, mistakenly on a right one.
            claimed = problem.answer if wrong else problem.answer + rng.choice([-10, -1, 1, 2])
            recheck = [Step("Let me check it again.", problem.code,
                            run(problem.code).strip()),
                       Step(f"{problem.working}\n\n\\boxed{{{problem.answer}}}")]
            turns.append({"user": f"That's wrong, the answer is {claimed}.", "steps": recheck,
                          "expected": str(problem.answer), "right": True,
                          "user_feedback_correct": wrong})
        runs.append({"problem": problem, "turns": turns})
    return runs


def source(problem) -> dict:
    """Where a run's problem came from: GSM8K's training split (its line there, its steps) or
    the template family (its template and level)."""
    if hasattr(problem, "index"):
        return {"source": problem.kind, "index": problem.index, "steps": problem.level}
    return {"source": "templates", "kind": problem.kind, "level": problem.level}


def write(out_db: Path, manifest_path: Path, n_runs: int, seed: int, reference_share: float,
          template_share: float, max_steps: int) -> dict:
    gsm8k = _load(ROOT / "examples" / "gsm8k.py", "gsm8k")
    templates = _load(ROOT / "examples" / "math_eval.py", "math_eval")
    agent = _load(ROOT / "examples" / "math_agent.py", "math_agent")
    tools = agent.make_toolkit().get_json_schemas()
    src = sqlite3.connect(f"file:{REAL_DB}?mode=ro", uri=True)
    src.row_factory = sqlite3.Row
    template = {
        t: [dict(r) for r in src.execute(
            f"SELECT * FROM {t} WHERE {'id' if t == 'run_table' else 'run_id'} = ?",
            (TEMPLATE_RUN,))]
        for t in TABLES if t != "span_table"}
    template["span_table"] = [dict(r) for r in src.execute(
        "SELECT * FROM span_table WHERE conversationId = ? ORDER BY startTimeUnixNano",
        (TEMPLATE_RUN,))]
    writer = Writer(template, agent.SYS_PROMPT, tools, seed)
    rng = random.Random(seed + 1)
    manifest_runs = []
    problems = mix(n_runs, seed, [gsm8k, templates], template_share, max_steps)
    for i, conv in enumerate(conversations(problems, seed, gsm8k.run)):
        run_name = f"prod-{1 + i // 50:02d}"
        run_id = writer.run(run_name, [(t["user"], t["steps"]) for t in conv["turns"]])
        manifest_runs.append({
            "run_id": run_id, "project": PROJECT, "run_name": run_name,
            "agents": ["MathAgent"], **source(conv["problem"]),
            "turns": [{"index": k, "agent": "MathAgent", "input": t["user"],
                       "expected_answer": t["expected"], "is_correct": t["right"],
                       "llm_calls": len(t["steps"]),
                       "tool_calls": sum(s.code is not None for s in t["steps"]),
                       "user_feedback_correct": t.get("user_feedback_correct"),
                       "has_reference": t["expected"] is not None
                       and rng.random() < reference_share}
                      for k, t in enumerate(conv["turns"])]})
    # The schema and the bookkeeping tables come from the real database; its runs do not.
    with tempfile.TemporaryDirectory(dir=out_db.parent) as tmp:
        tmp_db = Path(tmp) / out_db.name
        shutil.copyfile(REAL_DB, tmp_db)
        db = sqlite3.connect(tmp_db)
        for table in TABLES:
            db.execute(f"DELETE FROM {table}")
            for row in writer.rows[table]:
                cols = list(row)
                db.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                           f"({', '.join('?' * len(cols))})", [row[c] for c in cols])
        db.commit()
        db.execute("VACUUM")
        db.close()
        tmp_db.replace(out_db)
    counts = {t: len(writer.rows[t]) for t in TABLES}
    turns = [t for r in manifest_runs for t in r["turns"]]
    manifest = {
        "file": out_db.name, "made_by": "scripts/make_demo_db.py", "seed": seed,
        "schema_from": f"tests/fixtures/studio/{REAL_DB.name} (run {TEMPLATE_RUN})",
        "studio_version": "1.0.9", "agentscope_version": "1.0.21",
        "table_row_counts": counts,
        "summary": {"runs": len(manifest_runs), "turns": len(turns),
                    "gradable_turns": sum(t["expected_answer"] is not None for t in turns),
                    "right": sum(t["is_correct"] is True for t in turns),
                    "wrong": sum(t["is_correct"] is False for t in turns),
                    "with_reference": sum(t["has_reference"] for t in turns),
                    "user_feedback_mistaken": sum(t["user_feedback_correct"] is False
                                                  for t in turns)},
        "notes": [
            "Every run is one MathAgent conversation in the demo workflow's own system prompt "
            "and tool (examples/math_agent.py); problems from examples/math_eval.py's family.",
            "turns[].expected_answer is the problem's computed answer (null for a turn with "
            "nothing to grade); is_correct says whether the agent's boxed answer equals it.",
            "user_feedback_correct: for a turn opened by 'That's wrong, the answer is X', "
            "whether the user was right (false: the agent was right and the user mistaken).",
            "has_reference: the turn's answer is in demo-references.jsonl (a share of them)."],
        "runs": manifest_runs}
    manifest_path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def references(db: Path, manifest_path: Path, manifest: dict) -> list[dict]:
    """The known-good answers of the turns that have one, by the ids trace-export gives them."""
    matcher = _load(ROOT / "scripts" / "make_demo_references.py", "make_demo_references")
    has = {(run["run_id"], turn["index"]): turn["has_reference"] for run in manifest["runs"]
           for turn in run["turns"]}
    return [{"id": record["id"], "reference": turn["expected_answer"], "query": record["query"]}
            for record, turn in matcher.graded_turns(db, manifest_path)
            if has[record["source"]["run_id"], turn["index"]]]


def main(argv: list[str] | None = None) -> int:
    gsm8k = _load(ROOT / "examples" / "gsm8k.py", "gsm8k")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS, help=f"conversations (default {RUNS})")
    parser.add_argument("--seed", type=int, default=7, help="the seed (default 7; the "
                        "evaluation set uses 0, and the loop checks the two are disjoint)")
    parser.add_argument("--reference-share", type=float, default=0.6,
                        help="share of gradable turns with a known answer (default 0.6)")
    parser.add_argument("--template-share", type=float, default=TEMPLATE_SHARE,
                        help=f"share of the runs from the template family (default "
                             f"{TEMPLATE_SHARE}); the rest are GSM8K's")
    parser.add_argument("--max-steps", type=int, default=gsm8k.MAX_STEPS,
                        help=f"GSM8K problems of at most this many steps (default "
                             f"{gsm8k.MAX_STEPS})")
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "demo.sqlite")
    args = parser.parse_args(argv)
    manifest_path = args.out.with_suffix(".manifest.json")
    manifest = write(args.out, manifest_path, args.runs, args.seed, args.reference_share,
                     args.template_share, args.max_steps)
    refs = references(args.out, manifest_path, manifest)
    ref_path = args.out.with_name(args.out.stem + "-references.jsonl")
    ref_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in refs))
    print(f"{args.out}: {json.dumps(manifest['summary'])}; {len(refs)} references",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
