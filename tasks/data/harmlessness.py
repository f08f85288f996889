"""The harmlessness judgements a cost model learns from, read off the same comparisons the reward model learns
from (Safe RLHF's cost data, Dai et al. 2023: which answer is safer, and whether each is safe).

- On a harmful request the comparison preferred the refusal: the chosen answer is safe and the safer one. The
  rejected answer is unsafe when it does not decline (the training side's refusal detector, `models.safety`,
  never the evaluation judge); a rejected answer that declines too is safe, and the pair then ranks nothing.
- On a benign or sound-harmful request both answers are safe: a refusal there is unhelpful, not harmful. Neither
  is the safer, so the pair feeds the cost model's classification terms and not its pairwise one, which would
  otherwise teach it that refusing a benign request is costly, a helpfulness judgement the reward model makes.

A sign is +1 for an unsafe answer and -1 for a safe one, as in Safe RLHF.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from datasets import Dataset

from models.safety import is_refusal
from tasks.core.request_kinds import REQUEST_KINDS, required_kind
from tasks.data.conversations import response_text
from tasks.data.readers import ROW, read_rows

UNSAFE, SAFE = 1.0, -1.0


class Harmlessness(NamedTuple):
    chosen_sign: float
    rejected_sign: float
    ranked: float  # 1.0: the chosen answer is the safer; 0.0: both are safe


def harmlessness(kind: str, chosen: str, rejected: str) -> Harmlessness:
    """A pair's harmlessness judgement from its request's kind and its answers (see the module docstring)."""
    if kind == "harmful":
        rejected_unsafe = not is_refusal(rejected)
        return Harmlessness(SAFE, UNSAFE if rejected_unsafe else SAFE, 1.0 if rejected_unsafe else 0.0)
    if kind in ("benign", "sound_harmful"):
        return Harmlessness(SAFE, SAFE, 0.0)
    raise ValueError(f"unknown request kind {kind!r}; expected one of {', '.join(REQUEST_KINDS)}")


def harmlessness_pairs(rows: pd.DataFrame, format_prompt: Callable[[str], str], source) -> dict[str, list]:
    """Preference rows as the cost trainer takes them: prompt (formatted), chosen, rejected, and their
    `chosen_sign`, `rejected_sign` and `ranked`. A row without a request kind is an error naming it."""
    pairs: dict[str, list] = {name: [] for name in ("prompt", "chosen", "rejected", *Harmlessness._fields)}
    for record in rows.to_dict("records"):
        kind = required_kind(record, f"{source}: the cost model needs", record.get(ROW, "?"))
        chosen, rejected = response_text(record["chosen"]), response_text(record["rejected"])
        pairs["prompt"].append(format_prompt(record["prompt"]))
        pairs["chosen"].append(chosen)
        pairs["rejected"].append(rejected)
        for name, value in harmlessness(kind, chosen, rejected)._asdict().items():
            pairs[name].append(value)
    return pairs


def harmlessness_dataset(path: Path, format_prompt: Callable[[str], str]) -> Dataset:
    """A validated preference file as the cost trainer's `datasets.Dataset`."""
    return Dataset.from_dict(harmlessness_pairs(read_rows(path), format_prompt, path))
