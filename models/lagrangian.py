"""PPO-Lagrangian's multiplier: the policy maximises R - lambda * C, and lambda >= 0 is learnt against a cost limit.

Safe RLHF (Dai et al. 2023, "Safe RLHF: Safe Reinforcement Learning from Human Feedback", sec. 3.3) solves
max_theta min_{lambda >= 0} J_R(theta) - lambda * (J_C(theta) - d) by alternating a policy step on the
Lagrangian with a dual step on lambda. The dual step here is projected gradient ascent on lambda itself,

    lambda_{k+1} = min(lambda_max, max(0, lambda_k + lr * (mean episode cost_k - d))),

where Safe RLHF's code steps log lambda instead (ln lambda_{k+1} = ln lambda_k + lr * lambda_k * (J_C - d)).
We keep lambda itself: it can reach 0 exactly, so a policy inside its cost limit is optimised on the reward
alone, and it moves by the same amount at any size, where a log-space lambda that has sunk to 1e-3 takes many
steps over the limit to matter again. The multiplier is read once per rollout and held fixed during the update.
"""

from __future__ import annotations

from typing import Any

import torch


def lagrange_multiplier_step(multiplier: float, mean_cost: float, cost_limit: float, learning_rate: float,
                             max_multiplier: float | None = None) -> float:
    """One dual step: lambda + lr * (mean_cost - cost_limit), clipped to [0, max_multiplier]. It rises while the
    batch's mean cost is over the limit and falls, never below 0, while it is under."""
    stepped = max(0.0, multiplier + learning_rate * (mean_cost - cost_limit))
    return stepped if max_multiplier is None else min(stepped, max_multiplier)


def lagrangian_scores(rewards: torch.Tensor, costs: torch.Tensor, multiplier: float) -> torch.Tensor:
    """(r - lambda * c) / (1 + lambda) per answer, all (B,). Safe RLHF divides its combined advantage by
    1 + lambda so that the scale PPO's clip range and learning rate were tuned for holds however large lambda
    grows; with one critic we combine the scores, and the division does the same job.
    Loop form: [(r - lam * c) / (1 + lam) for r, c in zip(rewards, costs)]."""
    return (rewards - multiplier * costs) / (1.0 + multiplier)


class LagrangeMultiplier:
    """lambda with its cost limit and step size; checkpointable (accelerate's `register_for_checkpointing`)."""

    def __init__(self, initial: float, learning_rate: float, cost_limit: float,
                 max_multiplier: float | None = None) -> None:
        if initial < 0:
            raise ValueError(f"the Lagrange multiplier must start >= 0, got {initial}")
        if learning_rate <= 0:
            raise ValueError(f"the multiplier's learning rate must be > 0, got {learning_rate}")
        if max_multiplier is not None and max_multiplier < initial:
            raise ValueError(f"max_multiplier ({max_multiplier}) is below the initial multiplier ({initial})")
        self.value = float(initial)
        self.learning_rate = float(learning_rate)
        self.cost_limit = float(cost_limit)
        self.max_multiplier = max_multiplier

    def update(self, mean_cost: float) -> None:
        self.value = lagrange_multiplier_step(self.value, mean_cost, self.cost_limit, self.learning_rate,
                                              self.max_multiplier)

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore lambda; its step size and limit stay as constructed (they come from the config)."""
        if "value" not in state:
            raise ValueError(f"Lagrange multiplier state has no 'value': {state}")
        self.value = float(state["value"])
