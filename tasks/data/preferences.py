"""Preference pairs as the trainers take them: TRL's prompt/chosen/rejected, prompts formatted for the model.

Standard or conversational rows give the same pairs: a prompt rendered as the model sees it, responses as text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from datasets import Dataset

from tasks.data.conversations import response_text
from tasks.data.readers import read_rows

_OPENER = re.compile(r"\s*[^.!?]*[.!?]+")


def preference_dataset(path: Path, format_prompt: Callable[[str], str], *, hard_negatives: bool = False,
                       rank_cut_short: bool = False) -> Dataset:
    """A validated preference file as a `datasets.Dataset`, each prompt shown as the model will see it; with
    `hard_negatives`, also the pairs `with_hard_negatives` adds."""
    rows = read_rows(path)
    pairs = {
        "prompt": [format_prompt(prompt) for prompt in rows["prompt"]],
        "chosen": [response_text(value) for value in rows["chosen"]],
        "rejected": [response_text(value) for value in rows["rejected"]],
    }
    return Dataset.from_dict(with_hard_negatives(pairs, rank_cut_short=rank_cut_short) if hard_negatives else pairs)


def opener(text: str) -> str:
    """The first sentence of `text`, with its leading space ("Sure! Here is how..." -> "Sure!")."""
    found = _OPENER.match(text)
    return found.group(0) if found else text


def with_hard_negatives(pairs: dict[str, list[str]], *, rank_cut_short: bool = False) -> dict[str, list[str]]:
    """The pairs, plus for each the chosen answer over answers a reward model must not pay for (the InstructGPT
    and HH remedy: a reward model that saw only whole, on-topic answers can score these highly, and PPO then
    learns to say only them):

    - cut short: the rejected answer's first sentence (a bare "Happy to help." or "Sure!", or the start of
      harmful help) and the chosen answer's own first sentence when there is more to it;
    - off-topic: the chosen answer of the request half the list away (a fine answer to something else; to a
      harmful request, any answer but a refusal of it).

    With `rank_cut_short`, the chosen answer's first sentence also beats the rejected answer: a ranking
    chosen > its opener > rejected. Otherwise a policy whose refusals are cut short (by `max_new_tokens`, or a
    terse SFT) is paid less for refusing than for complying, and RL pushes it towards compliance.
    """
    out = {name: list(values) for name, values in pairs.items()}
    prompts, chosen_answers = pairs["prompt"], pairs["chosen"]
    seen = set(zip(prompts, chosen_answers, pairs["rejected"], strict=True))
    for i, (prompt, chosen, rejected) in enumerate(zip(prompts, chosen_answers, pairs["rejected"], strict=True)):
        other = len(prompts) // 2 + i
        off_topic = chosen_answers[other % len(prompts)] if prompts[other % len(prompts)] != prompt else ""
        cut_short = opener(chosen)
        extra = [(chosen, opener(rejected)), (chosen, cut_short), (chosen, off_topic)]
        if rank_cut_short:
            extra.append((cut_short, rejected))
        for better, worse in extra:
            if worse.strip() and worse.strip() != better.strip() and (prompt, better, worse) not in seen:
                seen.add((prompt, better, worse))
                out["prompt"].append(prompt)
                out["chosen"].append(better)
                out["rejected"].append(worse)
    return out
