"""How a prompt is shown to the model. Training, scoring and generation all go through `format_prompt`.

A prompt is either a user request (a string) or a conversation in TRL's conversational format: a list of
`{"role": ..., "content": ...}` turns, the last one the user's. Both render to the text the model continues.
"""

from __future__ import annotations

from typing import Literal

PromptFormat = Literal["plain", "chat_template"]
Message = dict[str, str]
Prompt = str | list[Message]


def as_messages(prompt: Prompt) -> list[Message]:
    """A prompt as a list of turns: a bare request is one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def format_prompt(prompt: Prompt, tokenizer, prompt_format: PromptFormat, template: str) -> str:
    """Render a prompt as the text the model continues. Completions then follow it directly.

    `plain` shows each user turn through `template` and each assistant turn after it, so a one-turn prompt
    is exactly `template.format(prompt=request)`; `chat_template` uses the tokenizer's own chat template.
    """
    if prompt_format == "plain":
        if isinstance(prompt, str):
            return template.format(prompt=prompt)
        return "".join(_plain_turn(turn, template) for turn in prompt)
    if prompt_format == "chat_template":
        return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown prompt_format {prompt_format!r}; expected 'plain' or 'chat_template'")


def _plain_turn(turn: Message, template: str) -> str:
    role, content = turn["role"], turn["content"]
    if role == "user":
        return template.format(prompt=content)
    if role == "assistant":
        return f" {content}\n"
    if role == "system":
        return f"{content}\n"
    raise ValueError(f"unknown role {role!r}; expected system, user or assistant")


def prompt_formatter(tokenizer, prompt_format: PromptFormat, template: str):
    """`format_prompt` with the model's settings bound: a callable from raw prompt to model input."""
    return lambda prompt: format_prompt(prompt, tokenizer, prompt_format, template)
