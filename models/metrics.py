"""Evaluation metrics as pure tensor functions."""

from __future__ import annotations

import math
from statistics import NormalDist

import torch


def win_rate(policy_scores: torch.Tensor, baseline_scores: torch.Tensor) -> float:
    """Share of prompts where the policy's response outscores the baseline's; a tie counts half.

    Loop form: sum(1.0 if p > b else 0.5 if p == b else 0.0 for p, b in zip(policy, baseline)) / N.
    """
    if policy_scores.shape != baseline_scores.shape or policy_scores.numel() == 0:
        raise ValueError(f"win_rate needs two equal, non-empty score vectors, got {tuple(policy_scores.shape)} "
                         f"and {tuple(baseline_scores.shape)}")
    wins = (policy_scores > baseline_scores).float() + 0.5 * (policy_scores == baseline_scores).float()  # (N,)
    return wins.mean().item()


def sampled_kl(policy_logprobs: torch.Tensor, reference_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-answer KL(policy || reference) estimates, in nats, from answers sampled from the policy. (B,)

    The k1 estimator of Schulman (2020), "Approximating KL divergence": KL = E_y[log pi(y) - log pi_ref(y)], with
    both log-probabilities taken of the same sampled token ids (B, T); `mask` (B, T) marks each answer's tokens,
    its EOS included when it has one. Unbiased for the policy's sampling distribution, but a single answer's
    estimate may be negative. The per-token KL is the sum of these over the sum of `mask`.

    Loop form: kl[i] = sum(policy[i, t] - reference[i, t] for t if mask[i, t]).
    """
    if not policy_logprobs.shape == reference_logprobs.shape == mask.shape:
        raise ValueError(f"sampled_kl needs log-probs of the same tokens from each model and their mask, got "
                         f"{tuple(policy_logprobs.shape)}, {tuple(reference_logprobs.shape)} and {tuple(mask.shape)}")
    return ((policy_logprobs - reference_logprobs) * mask.to(policy_logprobs.dtype)).sum(dim=-1)


def correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two equal-length vectors (N,); 0 when either is constant (nothing to correlate).

    Loop form: sum((x_i - mean x) * (y_i - mean y)) / sqrt(sum((x_i - mean x)^2) * sum((y_i - mean y)^2)).
    """
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(f"correlation needs two equal 1-d vectors, got {tuple(x.shape)} and {tuple(y.shape)}")
    dx, dy = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = (dx.square().sum() * dy.square().sum()).sqrt()
    return 0.0 if denominator == 0 else (dx * dy).sum().item() / denominator.item()


def repeated_ngram_rate(words: list[str], n: int = 3) -> float:
    """Share of a response's word n-grams that repeat an n-gram seen earlier in it: 0 for text that never
    repeats itself, towards 1 for a loop ("the the the ..."). A degeneration measure (Holtzman et al. 2020 and
    Welleck et al. 2020 use the same n-gram repetition statistics). A response shorter than n words scores 0.

    Loop form: seen = set(); repeats = 0
               for gram in ngrams: repeats += gram in seen; seen.add(gram)
               return repeats / len(ngrams)
    """
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)  # each distinct n-gram's first occurrence is the only new one


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a rate (95% at z=1.96): unlike p ± z·se it stays inside [0, 1] and is not
    empty at 0 or at n successes, which small eval sets (27 sound-harmful prompts) hit often.

    centre = (p + z²/2n) / (1 + z²/n),  half-width = z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n),  p = successes/n.
    """
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"wilson_interval needs 0 <= successes <= trials and trials > 0, got {successes}/{trials}")
    p, z2 = successes / trials, z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def one_sided_z(confidence: float) -> float:
    """The standard normal quantile at `confidence`: a one-sided bound at that level is estimate -/+ z * se."""
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    return NormalDist().inv_cdf(confidence)


def mean_bound(values: torch.Tensor, confidence: float, side: str) -> float:
    """A one-sided Student-t confidence bound of the mean of `values` (N,), N >= 2: the `lower` one lies below
    the true mean with probability `confidence`, the `upper` one above it. Applied to per-prompt differences it
    is the paired t-test's bound.

    Loop form: m = sum(v) / N; s = sqrt(sum((v - m)^2) / (N - 1)); bound = m -/+ t(confidence, N - 1) * s / sqrt(N).
    """
    if values.dim() != 1 or values.numel() < 2:
        raise ValueError(f"mean_bound needs a 1-d vector of at least 2 values, got shape {tuple(values.shape)}")
    _check_bound(confidence, side)
    from scipy.stats import t as student_t  # only where a bound is asked for: scipy is slow to import

    n = values.numel()
    mean, spread = values.double().mean().item(), values.double().std().item()
    half = float(student_t.ppf(confidence, n - 1)) * spread / math.sqrt(n)
    return mean - half if side == "lower" else mean + half


def rate_bound(successes: int, trials: int, confidence: float, side: str) -> float:
    """A one-sided Wilson bound of a rate: the end of the Wilson interval with z at `confidence`."""
    _check_bound(confidence, side)
    low, high = wilson_interval(successes, trials, z=one_sided_z(confidence))
    return low if side == "lower" else high


def _check_bound(confidence: float, side: str) -> None:
    if side not in ("lower", "upper"):
        raise ValueError(f"side must be 'lower' or 'upper', got {side!r}")
    one_sided_z(confidence)  # raises for a level outside [0.5, 1)


def rogan_gladen(observed: float, sensitivity: float, specificity: float) -> float:
    """The true rate behind an `observed` rate measured by an instrument with known error rates (Rogan and
    Gladen, 1978): observed = true * sensitivity + (1 - true) * (1 - specificity), solved for true and clipped
    to [0, 1]. The instrument must beat chance (sensitivity + specificity > 1).

    Loop form: (observed + specificity - 1) / (sensitivity + specificity - 1), clipped.
    """
    for name, value in (("observed", observed), ("sensitivity", sensitivity), ("specificity", specificity)):
        if not 0 <= value <= 1:
            raise ValueError(f"rogan_gladen: {name} must be in [0, 1], got {value}")
    youden = sensitivity + specificity - 1
    if youden <= 0:
        raise ValueError(f"rogan_gladen needs sensitivity + specificity > 1, got {sensitivity} + {specificity}")
    return min(1.0, max(0.0, (observed + specificity - 1) / youden))
