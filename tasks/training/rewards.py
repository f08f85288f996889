"""The RL stages' reward as the config composes it (`reward_functions`): the reward model's score plus rule terms
(`models.reward_rules`), each weighted. PPO sums them here (`ComposedReward`); RLOO hands them to TRL as
`reward_funcs` with `reward_weights`. Either way every term is logged on its own each step. The reward-hacking
probe still reads the reward model alone: the rules are what its independent check checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch

from models.reward_rules import rule_term
from tasks.core.request_kinds import required_kind
from tasks.core.training_sections import RewardFunction

Scorer = Callable[[list[str], list[str]], torch.Tensor]  # (formatted prompts, answers) -> (B,)


def kinds_by_prompt(rows: pd.DataFrame, format_prompt: Callable, functions: Sequence[RewardFunction],
                    source) -> dict[str, str]:
    """Formatted prompt -> its request's kind, where a rule needs it (else empty)."""
    rules = [f.name for f in functions if f.name != "model"]
    if not rules:
        return {}
    kinds = {}
    for number, record in enumerate(rows.to_dict("records"), start=1):
        kind = required_kind(record, f"{source}: the reward rules {', '.join(rules)} need", number)
        kinds[format_prompt(record["prompt"])] = kind
    return kinds


class RuleReward:
    """One rule as a reward function of formatted prompts and answers, in TRL's signature too."""

    def __init__(self, name: str, kinds: dict[str, str]):
        self.__name__, self.kinds = name, kinds  # TRL names the logged reward after the function

    def __call__(self, prompts: list[str], completions: list[str], **_) -> list[float]:
        return rule_term(self.__name__, [self.kinds[p] for p in prompts], completions).tolist()


class ComposedReward:
    """sum(weight x term) per answer; `last_terms` holds each term's batch mean for logging."""

    def __init__(self, functions: Sequence[RewardFunction], score: Scorer, kinds: dict[str, str]):
        self.score = score  # the reward model alone
        self.weights = {f.name: f.weight for f in functions}
        self.rules = {f.name: RuleReward(f.name, kinds) for f in functions if f.name != "model"}
        self.last_terms: dict[str, float] = {}

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        terms = {"model": self.score(prompts, responses).float().cpu()}
        terms.update({name: torch.tensor(rule(prompts, responses)) for name, rule in self.rules.items()})
        self.last_terms = {name: values.mean().item() for name, values in terms.items()}
        return sum(self.weights[name] * values for name, values in terms.items())
