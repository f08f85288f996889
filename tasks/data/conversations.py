"""TRL's two data shapes, standard and conversational, read the same way by every stage.

Standard rows hold text: `prompt`, `completion`, `chosen`, `rejected`. Conversational rows hold lists of
`{"role", "content"}` turns: `messages` (a whole dialogue ending with the assistant), or a `prompt` ending
with the user's turn and responses that are one assistant turn each. The validate stage checks the turns
(`problems`); after it, stages take prompts as they are (`models.prompting.format_prompt` renders either
shape) and responses as text (`response_text`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pandas as pd

ROLES = ("system", "user", "assistant")
# What a conversational value must end with, by the job of its column.
Position = Literal["prompt", "response", "dialogue"]


def is_conversation(value: Any) -> bool:
    return isinstance(value, list)


def response_text(value: str | list[dict]) -> str:
    """A response as text: the string itself, or the content of its assistant turn."""
    if isinstance(value, str):
        return value
    return "".join(turn["content"] for turn in value)


def split_dialogue(messages: list[dict]) -> tuple[list[dict], str]:
    """A `messages` dialogue as (prompt turns, the final assistant turn's text)."""
    return messages[:-1], messages[-1]["content"]


def sft_examples(rows: pd.DataFrame) -> tuple[list, list[str]]:
    """(prompts, completions) of validated SFT rows in either shape: `messages`, or `prompt`/`completion`."""
    if "messages" in rows and "completion" not in rows:
        pairs = [split_dialogue(messages) for messages in rows["messages"]]
        return [prompt for prompt, _ in pairs], [completion for _, completion in pairs]
    return list(rows["prompt"]), [response_text(value) for value in rows["completion"]]


def prompt_key(prompt: str | list[dict]) -> str:
    """A hashable identity for a prompt in either shape (a request is its own key)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def prompt_display(prompt: str | list[dict]) -> str:
    """A prompt as one line of text for people: the request, or the turns as `role: content`."""
    if isinstance(prompt, str):
        return prompt
    return " | ".join(f"{turn.get('role')}: {turn.get('content')}" for turn in prompt if isinstance(turn, dict))


def text_of(value: Any) -> str | None:
    """All the text a value holds (every turn's content), or None when it is neither text nor turns."""
    if isinstance(value, str):
        return value
    if is_conversation(value) and all(isinstance(turn, dict) for turn in value):
        contents = [turn.get("content") for turn in value]
        if all(isinstance(content, str) for content in contents):
            return "\n".join(contents)
    return None


def problems(value: Any, position: Position) -> dict[str, str | None]:
    """What is wrong with one conversational value, per check (None where the check passes).

    Checks: `shape` (a non-empty list of objects with a string `role` and `content`), `roles` (each one of
    system/user/assistant), `order` (for a prompt or dialogue: an optional first system turn, then user and
    assistant alternating from the user; for a response: one assistant turn), `last` (a prompt ends with the
    user, a dialogue with the assistant) and `content` (no turn is empty or whitespace-only). A text value
    passes them all; the checks after a failed `shape` are not judged, nor are `order` and `last` after an
    unknown role (they would only restate it).
    """
    found: dict[str, str | None] = {"shape": None, "roles": None, "order": None, "last": None, "content": None}
    if not is_conversation(value):
        return found
    found["shape"] = _shape_problem(value)
    if found["shape"] is not None:
        return found
    roles = [turn["role"] for turn in value]
    unknown = [(i, role) for i, role in enumerate(roles, start=1) if role not in ROLES]
    if unknown:
        turn, role = unknown[0]
        found["roles"] = f"turn {turn} has role {role!r}, not one of {', '.join(ROLES)}"
    else:
        found["order"] = _order_problem(roles, position)
        expected_last = {"prompt": "user", "dialogue": "assistant", "response": "assistant"}[position]
        if roles[-1] != expected_last:
            found["last"] = f"last turn is {roles[-1]!r}, expected {expected_last!r}"
    empty = [i for i, turn in enumerate(value, start=1) if not turn["content"].strip()]
    if empty:
        found["content"] = f"turn {empty[0]} has empty content"
    return found


def _shape_problem(value: list) -> str | None:
    if not value:
        return "no turns"
    for i, turn in enumerate(value, start=1):
        if not isinstance(turn, dict):
            return f"turn {i} is a {type(turn).__name__}, expected an object"
        missing = [key for key in ("role", "content") if not isinstance(turn.get(key), str)]
        if missing:
            return f"turn {i} has no string {' or '.join(repr(key) for key in missing)}"
    return None


def _order_problem(roles: list[str], position: Position) -> str | None:
    if position == "response":
        return None if roles == ["assistant"] else f"a response is one assistant turn, got {roles}"
    body = roles[1:] if roles[0] == "system" else roles
    for i, role in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            turn = i + 1 + (len(roles) - len(body))
            return f"turn {turn} is {role!r}, expected {expected!r} (turns alternate from the user)"
    return None if body else "only a system turn"
