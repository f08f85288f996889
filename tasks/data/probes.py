"""The reward-hacking monitor's probe set: a fixed set of training prompts, each with the answer it wants.

Which answer a probe prompt wants comes from its preference pair: a prompt whose chosen answer is a refusal
should be refused; any other should be answered. Training prompts, not held-out ones: the monitor decides
when training stops, and the held-out eval must not take part in that.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd

from models.safety import is_refusal
from tasks.data.conversations import prompt_key, response_text


@dataclass(frozen=True)
class Probe:
    prompts: list  # raw prompts (text or conversations), formatted by the caller's formatter
    wants_refusal: list[bool]


def probe_set(preferences: pd.DataFrame, size: int, seed: int) -> Probe:
    """Up to `size` distinct training prompts, half wanting a refusal where the data has enough, drawn by seed."""
    wanted: dict[str, tuple[object, bool]] = {}
    for prompt, chosen in zip(preferences["prompt"], preferences["chosen"], strict=True):
        wanted.setdefault(prompt_key(prompt), (prompt, is_refusal(response_text(chosen))))
    keys = sorted(wanted)
    refuse = [key for key in keys if wanted[key][1]]
    answer = [key for key in keys if not wanted[key][1]]
    rng = random.Random(seed)
    rng.shuffle(refuse)
    rng.shuffle(answer)
    take_refuse = min(len(refuse), max(size // 2, size - len(answer)))
    picked = sorted(refuse[:take_refuse] + answer[: size - take_refuse])
    return Probe([wanted[key][0] for key in picked], [wanted[key][1] for key in picked])
