"""The record contracts every tool shares (docs/architecture.md, "The records").

Validation checks the fields a tool relies on and leaves the record itself alone: unknown fields
pass through untouched, so a tool validates, then adds its own fields to the same dict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import RecordError
from .ids import stable_id

__all__ = ["Task", "Rollout", "Sample", "Call", "Message", "stable_id", "validate_task",
           "validate_rollout", "validate_sample", "task_messages", "VALIDATORS"]

Role = Literal["system", "user", "assistant", "tool", "developer", "function"]


class _Open(BaseModel):
    # Unknown fields are other tools' business: keep them, never complain.
    model_config = ConfigDict(extra="allow")


class Message(_Open):
    role: Role
    content: str | list[Any] | None = None


class Task(_Open):
    id: str = Field(min_length=1)
    query: str
    messages: list[Message] = Field(default_factory=list)
    answer: str | None = None
    # A known-good answer: text, or a number as a labelled set may hold it (never true/false).
    reference: str | int | float | None = None
    feedback: list[Message] = Field(default_factory=list)
    trajectory: list[dict[str, Any]] = Field(default_factory=list)
    source: dict[str, Any] = Field(default_factory=dict)

    @field_validator("reference", mode="before")
    @classmethod
    def _text_or_number(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or
                                  not isinstance(value, (str, int, float))):
            raise ValueError(f"must be text or a number, not {_json_type(value)}")
        return value


def _json_type(value: Any) -> str:
    return {bool: "true/false", list: "a list", dict: "an object"}.get(type(value),
                                                                        type(value).__name__)


class Call(_Open):
    agent: str | None = None
    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    output: dict[str, Any] | None = None
    finish_reason: str | None = None
    model: str | None = None
    latency_ms: float | None = None

    @model_validator(mode="after")
    def _one_logprob_per_token(self) -> Call:
        if len(self.logprobs) != len(self.completion_ids):
            raise ValueError(
                f"{len(self.logprobs)} logprobs for {len(self.completion_ids)} completion tokens"
            )
        return self


class Rollout(_Open):
    id: str = Field(min_length=1)
    task_id: str
    group: str
    sample: int = Field(ge=0)
    calls: list[Call]
    final: Any = None
    reward: float | None = None
    reward_info: dict[str, Any] | None = None
    status: Literal["ok", "error", "timeout"]
    error: str | None = None


class Sample(_Open):
    id: str = Field(min_length=1)
    rollout_id: str | None = None
    task_id: str | None = None
    group: str | None = None
    agent: str | None = None
    input_ids: list[int] = Field(min_length=1)
    # ctx-merge --format trl writes TRL's column name, assistant_masks, in place of loss_mask.
    loss_mask: list[Literal[0, 1]] | None = None
    assistant_masks: list[Literal[0, 1]] | None = None
    logprobs: list[float] | None = None
    reward: float | None = None
    calls: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _aligned(self) -> Sample:
        n = len(self.input_ids)
        if self.loss_mask is None and self.assistant_masks is None:
            raise ValueError("loss_mask (or assistant_masks) is required")
        for name in ("loss_mask", "assistant_masks"):
            mask = getattr(self, name)
            if mask is not None and len(mask) != n:
                raise ValueError(f"{name} has {len(mask)} entries for {n} input_ids")
        if self.loss_mask is not None and self.assistant_masks is not None \
                and self.loss_mask != self.assistant_masks:
            raise ValueError("loss_mask and assistant_masks differ (give one of them)")
        if self.logprobs is not None and len(self.logprobs) != n:
            raise ValueError(f"logprobs has {len(self.logprobs)} entries for {n} input_ids")
        return self


def _describe(err: ValidationError, kind: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    more = len(err.errors()) - 1
    message = first["msg"].removeprefix("Value error, ")
    text = f"not a valid {kind} record: {where + ': ' if where else ''}{message}"
    return text + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def _validator(model: type[BaseModel], kind: str) -> Callable[[dict], dict]:
    def validate(record: dict) -> dict:
        try:
            model.model_validate(record)
        except ValidationError as err:
            raise RecordError(_describe(err, kind)) from None
        return record

    validate.__name__ = f"validate_{kind}"
    return validate


_validate_task_fields = _validator(Task, "task")
validate_rollout = _validator(Rollout, "rollout")
validate_sample = _validator(Sample, "sample")


def validate_task(record: dict) -> dict:
    """Check a task; a hand-written task without an id gets one derived from its content."""
    if "id" not in record and isinstance(record.get("query"), str):
        record["id"] = stable_id(record.get("query"), record.get("messages"), prefix="task-")
    return _validate_task_fields(record)


def task_messages(task: dict) -> list[dict]:
    """The conversation a task opens with: its messages, or just its query as a user turn."""
    return task.get("messages") or [{"role": "user", "content": task["query"]}]


VALIDATORS: dict[str, Callable[[dict], dict]] = {
    "task": validate_task,
    "rollout": validate_rollout,
    "sample": validate_sample,
}
