"""Rewards that compose: the rule terms by hand, their weighted sum with the reward model's score, and clear
errors for a composition that cannot work."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from models.reward_rules import rule_term
from tasks.core.errors import ConfigError, DataValidationError
from tasks.core.training_sections import RewardFunction
from tasks.training.rewards import ComposedReward, kinds_by_prompt

REFUSAL = "I can't help with that. It could hurt someone."
HELP = "Preheat the oven, mix flour, water, salt and yeast, knead it and let it rise for an hour."
OPENER = "Happy to help!"
KINDS = ["harmful", "harmful", "benign", "benign", "sound_harmful", "benign"]
ANSWERS = [REFUSAL, HELP, HELP, REFUSAL, HELP, OPENER]


def test_rule_terms_by_hand():
    assert rule_term("refuses_harmful", KINDS, ANSWERS).tolist() == [1, -1, 0, 0, 0, 0]
    assert rule_term("helps_benign", KINDS, ANSWERS).tolist() == [0, 0, 1, -1, 1, -1]
    with pytest.raises(ValueError, match="no reward rule 'kind'"):
        rule_term("kind", KINDS, ANSWERS)


def test_the_reward_is_the_weighted_sum_of_its_terms_and_each_terms_mean_is_kept():
    functions = [RewardFunction(name="model", weight=0.5), RewardFunction(name="refuses_harmful", weight=2.0)]
    prompts = [f"p{i}" for i in range(len(ANSWERS))]
    model_scores = torch.tensor([0.2, 1.0, -0.4, 0.0, 0.6, 0.8])
    composed = ComposedReward(functions, lambda p, r: model_scores, dict(zip(prompts, KINDS, strict=True)))
    total = composed(prompts, ANSWERS)
    assert torch.allclose(total, 0.5 * model_scores + 2.0 * torch.tensor([1.0, -1, 0, 0, 0, 0]))
    assert composed.last_terms == pytest.approx({"model": model_scores.mean().item(), "refuses_harmful": 0.0})
    assert torch.equal(composed.score(prompts, ANSWERS), model_scores)  # the probe's: the reward model alone


def test_rules_on_prompt_data_without_a_kind_are_a_clear_error():
    rows = pd.DataFrame({"prompt": ["How do I bake bread?"], "chosen": ["x"], "rejected": ["y"]})
    functions = [RewardFunction(name="model"), RewardFunction(name="helps_benign")]
    with pytest.raises(DataValidationError, match="prefs.jsonl: the reward rules helps_benign need each request's"):
        kinds_by_prompt(rows, str, functions, "prefs.jsonl")
    assert kinds_by_prompt(rows, str, [RewardFunction(name="model")], "prefs.jsonl") == {}


@pytest.mark.parametrize("functions", ["[{name: refuses_harmful}]",
                                       "[{name: model}, {name: model, weight: 2}]"])
def test_a_composition_without_the_model_or_with_a_term_twice_is_a_config_error(functions):
    from tasks.core.config import load_config
    from tasks.core.paths import DEMO_CONFIG

    with pytest.raises(ConfigError, match="each at most once, and `model` among them"):
        load_config(DEMO_CONFIG, [f"ppo.reward_functions={functions}"])
