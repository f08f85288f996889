"""PPO-Lagrangian's multiplier (Safe RLHF): the dual step by hand, its clipping, the combined score, and lambda on
a tiny PPO run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.lagrangian import LagrangeMultiplier, lagrange_multiplier_step, lagrangian_scores
from models.ppo import PPOTrainer
from models.tiny import build_tiny_llama, train_tokenizer
from models.value_head import PolicyWithValueHead
from tests.helpers.rl import TINY_PPO

HP = dataclasses.replace(TINY_PPO, rollout_batch_size=8, ppo_epochs=1)


def test_lambda_rises_while_the_cost_is_over_the_limit():
    # 1.0 + 0.1 * (0.5 - 0.0) = 1.05
    assert lagrange_multiplier_step(1.0, mean_cost=0.5, cost_limit=0.0, learning_rate=0.1) == pytest.approx(1.05)
    # the limit is what the cost is measured against: 1.0 + 0.1 * (0.5 - 2.0) = 0.85
    assert lagrange_multiplier_step(1.0, mean_cost=0.5, cost_limit=2.0, learning_rate=0.1) == pytest.approx(0.85)


def test_lambda_falls_while_under_the_limit_but_never_below_zero():
    # 1.0 + 0.1 * (-2.0 - 0.0) = 0.8
    assert lagrange_multiplier_step(1.0, mean_cost=-2.0, cost_limit=0.0, learning_rate=0.1) == pytest.approx(0.8)
    # 0.1 + 0.1 * (-5.0) = -0.4, projected onto lambda >= 0
    assert lagrange_multiplier_step(0.1, mean_cost=-5.0, cost_limit=0.0, learning_rate=0.1) == 0.0
    assert lagrange_multiplier_step(0.0, mean_cost=-5.0, cost_limit=0.0, learning_rate=0.1) == 0.0


def test_lambda_stops_at_its_ceiling():
    # 9.9 + 0.1 * 5 = 10.4, cut to 10
    assert lagrange_multiplier_step(9.9, 5.0, 0.0, 0.1, max_multiplier=10.0) == 10.0
    assert lagrange_multiplier_step(9.9, 5.0, 0.0, 0.1) == pytest.approx(10.4)


def test_the_score_is_reward_less_lambda_cost_over_one_plus_lambda():
    # lambda 1: (2 - 1) / 2 = 0.5 and (2 + 1) / 2 = 1.5; lambda 0 leaves the reward alone
    rewards, costs = torch.tensor([2.0, 2.0]), torch.tensor([1.0, -1.0])
    assert lagrangian_scores(rewards, costs, 1.0).tolist() == [0.5, 1.5]
    assert lagrangian_scores(rewards, costs, 0.0).tolist() == [2.0, 2.0]


def test_the_multiplier_checkpoints_its_value_and_refuses_bad_settings():
    multiplier = LagrangeMultiplier(1.0, 0.5, cost_limit=0.0)
    multiplier.update(1.0)  # 1.0 + 0.5 * 1.0
    restored = LagrangeMultiplier(1.0, 0.5, cost_limit=0.0)
    restored.load_state_dict(multiplier.state_dict())
    assert restored.value == 1.5
    with pytest.raises(ValueError, match="must start >= 0"):
        LagrangeMultiplier(-1.0, 0.5, 0.0)
    with pytest.raises(ValueError, match="learning rate must be > 0"):
        LagrangeMultiplier(1.0, 0.0, 0.0)


def _tiny_trainer(cost_fn, multiplier):
    torch.manual_seed(0)
    tokenizer = train_tokenizer(["User: say something\nAssistant: yes no maybe yes"] * 50, 300, 64)
    shape = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 64}
    policy, reference = (build_tiny_llama(tokenizer, **shape, init_seed=0) for _ in range(2))
    return PPOTrainer(PolicyWithValueHead(policy), tokenizer, lambda p, r: torch.full((len(r),), 2.0),
                      HP, reference=reference, cost_fn=cost_fn,
                      lagrangian=multiplier)


def test_ppo_lagrangian_charges_the_cost_and_steps_lambda_every_iteration():
    """A cost of 1 per answer against a limit of 0: lambda climbs by lr x 1 each step, and each step's score is
    (2 - lambda * 1) / (1 + lambda) at the lambda its rollout was taken with."""
    trainer = _tiny_trainer(lambda p, r: torch.ones(len(r)), LagrangeMultiplier(0.5, 0.25, cost_limit=0.0))
    seen = []
    for _ in range(3):
        metrics, rollout = trainer.step(["User: say something\nAssistant:"] * 8)
        seen.append((metrics["lagrangian/lambda"], metrics["cost/mean"], metrics["cost/limit"]))
        lam = metrics["lagrangian/lambda"]
        assert rollout.scores.tolist() == pytest.approx([(2.0 - lam) / (1.0 + lam)] * 8)
    assert seen == [(0.5, 1.0, 0.0), (0.75, 1.0, 0.0), (1.0, 1.0, 0.0)]
    assert trainer.lagrangian.value == 1.25


def test_ppo_needs_both_a_cost_and_a_multiplier_or_neither():
    with pytest.raises(ValueError, match="both a cost function and a Lagrange multiplier"):
        _tiny_trainer(lambda p, r: torch.ones(len(r)), None)
