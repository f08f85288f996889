"""How a prompt is shown to the model. Training, scoring and generation all go through `format_prompt`."""

from __future__ import annotations

from typing import Literal

PromptFormat = Literal["plain", "chat_template"]


def format_prompt(prompt: str, tokenizer, prompt_format: PromptFormat, template: str) -> str:
    """Render a user request as the text the model continues. Completions then start with a space."""
    if prompt_format == "plain":
        return template.format(prompt=prompt)
    if prompt_format == "chat_template":
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    raise ValueError(f"unknown prompt_format {prompt_format!r}; expected 'plain' or 'chat_template'")


def prompt_formatter(tokenizer, prompt_format: PromptFormat, template: str):
    """`format_prompt` with the model's settings bound: a callable from raw request to model input."""
    return lambda prompt: format_prompt(prompt, tokenizer, prompt_format, template)
