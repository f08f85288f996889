"""Which prompts a comparison round asks: a seeded sample of a prompts file, leaving out those already asked."""

from __future__ import annotations

import random
from collections.abc import Collection
from pathlib import Path

from models.prompting import Prompt
from tasks.core.errors import DataValidationError
from tasks.data.conversations import prompt_key
from tasks.data.readers import read_records


def sample_prompts(path: Path, n: int, seed: int, exclude: Collection[Prompt] = ()) -> list[Prompt]:
    """Up to `n` distinct prompts of the file (text or turns), none in `exclude`, in a seeded random order."""
    distinct: dict[str, Prompt] = {}
    for row, record in read_records(Path(path)):
        prompt = record.get("prompt")
        if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt):
            raise DataValidationError(f"{path}: row {row}: `prompt` must be non-empty text or a list of turns")
        distinct.setdefault(prompt_key(prompt), prompt)
    asked = {prompt_key(p) for p in exclude}
    fresh = [prompt for key, prompt in distinct.items() if key not in asked]
    random.Random(seed).shuffle(fresh)
    return fresh[:n]
