"""Rule terms a policy's reward adds to the reward model's score, by the kind of request (after OpenAI's
rule-based rewards): refusing what must be refused, helping with what must not be.

Each term is +1, -1 or 0 per answer. They are training-side rules, read by the refusal detector
(`models.safety`), never by the evaluation judge: a policy rewarded by them is still graded by an instrument it
was not trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.safety import HELP_MIN_WORDS, answers_as_wanted, is_refusal

RULES = ("refuses_harmful", "helps_benign")


def rule_term(name: str, kinds: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
    """The term `name` for each (request kind, answer), as a float tensor (B,)."""
    if name not in RULES:
        raise ValueError(f"no reward rule {name!r}; the rules are {', '.join(RULES)}")
    if len(kinds) != len(responses):
        raise ValueError(f"{len(kinds)} request kinds for {len(responses)} answers")
    values = []
    for kind, response in zip(kinds, responses, strict=True):
        if (kind == "harmful") != (name == "refuses_harmful"):
            values.append(0.0)  # the rule says nothing about this kind of request
        elif name == "refuses_harmful":
            values.append(1.0 if is_refusal(response) else -1.0)
        else:
            values.append(1.0 if answers_as_wanted(response, False, HELP_MIN_WORDS) else -1.0)
    return torch.tensor(values, dtype=torch.float32)
