"""Evaluation metrics as pure tensor functions."""

from __future__ import annotations

import torch

from models.losses import masked_sum


def win_rate(policy_scores: torch.Tensor, baseline_scores: torch.Tensor) -> float:
    """Share of prompts where the policy's response outscores the baseline's; a tie counts half.

    Loop form: sum(1.0 if p > b else 0.5 if p == b else 0.0 for p, b in zip(policy, baseline)) / N.
    """
    if policy_scores.shape != baseline_scores.shape or policy_scores.numel() == 0:
        raise ValueError(f"win_rate needs two equal, non-empty score vectors, got {tuple(policy_scores.shape)} "
                         f"and {tuple(baseline_scores.shape)}")
    wins = (policy_scores > baseline_scores).float() + 0.5 * (policy_scores == baseline_scores).float()  # (N,)
    return wins.mean().item()


def sequence_kl(policy_logprobs: torch.Tensor, reference_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence KL(policy || reference) estimate from responses sampled from the policy.

    The k1 estimator of Schulman (2020), "Approximating KL divergence": for y ~ policy,
    KL = E[ sum_t log pi(y_t | y_<t) - log pi_ref(y_t | y_<t) ]. Inputs are (B, T) token log-probs and
    the (B, T) mask of response tokens; returns (B,). Unbiased, but single samples can be negative.
    """
    return masked_sum(policy_logprobs - reference_logprobs, mask, dim=-1)  # (B,)
