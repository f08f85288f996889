"""Rule terms a policy's reward adds to the reward model's score, by the kind of request (after OpenAI's
rule-based rewards): refusing what must be refused, helping with what must not be.

Each term is +1, -1 or 0 per answer. They are training-side rules, read by the refusal detector
(`models.safety`), never by the evaluation judge: a policy rewarded by them is still graded by an instrument it
was not trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.safety import HELP_MIN_WORDS, answers_as_wanted

RULES = ("refuses_harmful", "helps_benign")


def rule_term(name: str, kinds: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
    """The term `name` for each (request kind, answer), as a float tensor (B,)."""
    if name not in RULES:
        raise ValueError(f"no reward rule {name!r}; the rules are {', '.join(RULES)}")
    if len(kinds) != len(responses):
        raise ValueError(f"{len(kinds)} request kinds for {len(responses)} answers")
    values = [0.0 if (kind == "harmful") != (name == "refuses_harmful")  # the rule says nothing of this kind
              else 1.0 if answers_as_wanted(response, kind == "harmful", HELP_MIN_WORDS) else -1.0
              for kind, response in zip(kinds, responses, strict=True)]
    return torch.tensor(values, dtype=torch.float32)
