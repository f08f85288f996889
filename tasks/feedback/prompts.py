"""Which prompts a comparison round asks: a seeded sample of a prompts file, leaving out those already asked."""

from __future__ import annotations

import random
from collections.abc import Collection
from pathlib import Path

from tasks.core.errors import DataValidationError
from tasks.data.readers import read_rows


def sample_prompts(path: Path, n: int, seed: int, exclude: Collection[str] = ()) -> list[str]:
    """Up to `n` distinct prompts of the file, none in `exclude`, in a seeded random order."""
    rows = read_rows(Path(path))
    if "prompt" not in rows:
        raise DataValidationError(f"{path}: no `prompt` column")
    bad = [row for row, prompt in zip(rows["row"], rows["prompt"], strict=True)
           if not isinstance(prompt, str) or not prompt.strip()]
    if bad:
        raise DataValidationError(f"{path}: row {bad[0]}: `prompt` must be a non-empty string")
    fresh = [p for p in dict.fromkeys(rows["prompt"]) if p not in set(exclude)]
    random.Random(seed).shuffle(fresh)
    return fresh[:n]
