"""Preference pairs as the trainers take them: TRL's prompt/chosen/rejected, prompts formatted for the model.

Standard or conversational rows give the same pairs: a prompt rendered as the model sees it, responses as text.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from datasets import Dataset

from tasks.data.conversations import response_text
from tasks.data.readers import read_rows


def preference_dataset(path: Path, format_prompt: Callable[[str], str]) -> Dataset:
    """A validated preference file as a `datasets.Dataset`, each prompt shown as the model will see it."""
    rows = read_rows(path)
    return Dataset.from_dict({
        "prompt": [format_prompt(prompt) for prompt in rows["prompt"]],
        "chosen": [response_text(value) for value in rows["chosen"]],
        "rejected": [response_text(value) for value in rows["rejected"]],
    })
