"""The derived columns through which GX checks values that may be text or TRL's conversational turns.

* One problem column per check of `conversations.problems` and data column, `<column>_<check>`: what is
  wrong with the row's value (e.g. "turn 2 has role 'bot'"), or null. The suite expects it to be null, so
  a failure's example rows say exactly what is wrong.
* A canonical string key per value, `<column>_key`, and the row's prompt key, `prompt_key` (for `messages`:
  the turns before the last): GX cannot hash lists, and the uniqueness and leakage checks compare these. A
  value that fails its own checks has no key (null): it is reported once, as what it is, not again as a
  duplicate or a leak.
* The (prompt, response text) pairs the token-length check renders, for rows whose values pass the checks.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from tasks.data import conversations
from tasks.data.conversations import Position

TURN_CHECKS = ("shape", "roles", "order", "last", "content")
PROMPT_KEY = "prompt_key"
_TYPE_NAMES = {bool: "a boolean", int: "a number", float: "a number", dict: "an object"}


def position(column: str) -> Position:
    """What a column's turns must be: a prompt, a whole dialogue (`messages`) or a response."""
    return {"prompt": "prompt", "messages": "dialogue"}.get(column, "response")


def problem_column(column: str, check: str) -> str:
    return f"{column}_{check}"


def key_column(column: str) -> str:
    return f"{column}_key"


def description(column: str, check: str) -> str:
    """What the check expects of the column, in words."""
    where = position(column)
    if check == "shape":
        shape = "a list of {role, content} turns"
        return f"'{column}' is {shape}" if where == "dialogue" else f"'{column}' is text or {shape}"
    if check == "roles":
        return f"'{column}' turns have roles system, user or assistant"
    if check == "order":
        if where == "response":
            return f"'{column}' as turns is one assistant turn"
        return f"'{column}' turns alternate from the user (after an optional system turn)"
    if check == "last":
        return f"'{column}' turns end with the {'user' if where == 'prompt' else 'assistant'}'s turn"
    if check == "content":
        return f"'{column}' turns have non-empty content"
    raise ValueError(f"unknown check {check!r}; expected one of {TURN_CHECKS}")


def value_problems(value: Any, where: Position) -> dict[str, str | None]:
    """`conversations.problems`, plus the shape of a value that is neither text nor turns (or text where a
    dialogue is expected). A missing value has no problems here: the not-null check reports it."""
    found: dict[str, str | None] = dict.fromkeys(TURN_CHECKS)
    if _missing(value):
        return found
    if isinstance(value, str) and where == "dialogue":
        return {**found, "shape": "text, expected a list of turns"}
    if not isinstance(value, (str, list)):
        kind = _TYPE_NAMES.get(type(value), f"a {type(value).__name__}")
        return {**found, "shape": f"{kind}, expected text or a list of turns"}
    return conversations.problems(value, where)


def key(value: Any, where: Position) -> str | None:
    """A canonical string for a value. A single turn of the column's own role is keyed as its text: the model
    sees a one-turn prompt exactly as the bare request, and a one-turn response as its text. None for a
    missing value or one that fails its checks (a list of strings, an object): those checks report it."""
    if not _valid(value, where):
        return None
    own_role = {"prompt": "user", "response": "assistant"}.get(where)
    if (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
            and value[0].get("role") == own_role and isinstance(value[0].get("content"), str)):
        value = value[0]["content"]
    return conversations.prompt_key(value)


def prompt_key(value: Any, column: str) -> str | None:
    """The key of a row's prompt: the `prompt` value, or a `messages` dialogue's turns before the last."""
    if column == "messages":
        value = value[:-1] if _valid(value, "dialogue") else None
    return key(value, "prompt")


def derived_columns(frame: pd.DataFrame, columns: tuple[str, ...]) -> dict[str, list]:
    """The problem and key columns of the data columns present, and the prompt key; name -> values."""
    derived: dict[str, list] = {}
    for column in (column for column in columns if column in frame):
        found = [value_problems(value, position(column)) for value in frame[column]]
        for check in TURN_CHECKS:
            derived[problem_column(column, check)] = [problems[check] for problems in found]
        derived[key_column(column)] = [key(value, position(column)) for value in frame[column]]
    if columns[0] in frame:
        derived[PROMPT_KEY] = [prompt_key(value, columns[0]) for value in frame[columns[0]]]
    return derived


def same_response(chosen: Any, rejected: Any) -> bool:
    """Whether two responses, text or turns, say the same. Whitespace around one does not make it different."""
    chosen, rejected = _response(chosen), _response(rejected)
    return chosen is not None and rejected is not None and chosen.strip() == rejected.strip()


def length_inputs(frame: pd.DataFrame, column: str) -> list[tuple[Any, str] | None]:
    """(prompt, response text) whose templated length the check counts, or None where a value fails the
    checks (it could not be rendered, and its own check reports it)."""
    if column == "messages":
        return [conversations.split_dialogue(value) if _valid(value, "dialogue") else None
                for value in frame[column]]
    responses = [""] * len(frame) if column == "prompt" else frame[column].tolist()
    return [(prompt, conversations.response_text(value)) if _valid(prompt, "prompt") and _valid(value, "response")
            else None for prompt, value in zip(frame["prompt"], responses, strict=True)]


def _valid(value: Any, where: Position) -> bool:
    return not _missing(value) and not any(value_problems(value, where).values())


def _response(value: Any) -> str | None:
    """A response's text, when it is text or well-formed turns; None otherwise."""
    if isinstance(value, str):
        return value
    well_formed = isinstance(value, list) and value_problems(value, "response")["shape"] is None
    return conversations.response_text(value) if well_formed else None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
