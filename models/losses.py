"""Loss maths and the small tensor helpers under it, as pure functions.

Each loss takes tensors and returns `(loss, *detached_metrics)`. Shapes are written as comments.
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` where `mask` is 1. Equivalent loop: sum(v for v, m in zip(values, mask) if m)."""
    masked = values * mask.to(values.dtype)
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` over positions where `mask` is 1."""
    return masked_sum(values, mask, dim) / mask.to(values.dtype).sum(dim=dim).clamp_min(1)


# --- PPO (Schulman et al. 2017) and the RLHF reward shaping around it (Ziegler et al. 2019) ---------------
#
# Every (B, T) tensor below covers the response tokens only: T is the (padded) response length and `mask` is
# 1 on a row's response tokens, 0 on padding. Rows are right-padded: each row's ones form one run from t = 0.


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` over the positions where `mask` is 1; a scalar.

    Loop form: xs = [v for v, m in zip(values, mask) if m]; mean = sum(xs) / n;
    var = sum((x - mean) ** 2 for x in xs) / (n - 1 if unbiased else n).
    Raises ValueError when no position is kept, or only one and `unbiased` (the variance is undefined).
    """
    count = mask.to(values.dtype).sum()
    needed = 2 if unbiased else 1
    if count < needed:
        raise ValueError(f"masked_var needs at least {needed} unmasked value(s) (unbiased={unbiased}), "
                         f"got {int(count.item())}")
    centred = values - masked_mean(values, mask)
    variance = masked_mean(centred**2, mask)  # biased: sum / n
    return variance * count / (count - 1) if unbiased else variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / sqrt(var + 1e-8), mean and (unbiased) variance taken over unmasked positions; (B, T).

    With `shift_mean=False` the mean is added back: only the scale changes. Masked-out positions are 0.
    """
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)  # (B, T)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution softmax(logits) at each position: (B, T, V) -> (B, T).

    H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v, computed as -sum_v p_v log_softmax(z)_v (log_softmax
    subtracts the logsumexp, so large logits do not overflow). Logits of -inf (tokens filtered out by top-k or
    top-p) contribute 0 * log 0 = 0, with finite gradients. Runs in the logits' dtype: pass `.float()` for
    bf16 models.
    """
    logprobs = torch.log_softmax(logits, dim=-1)  # (B, T, V)
    probs = logprobs.exp()  # (B, T, V)
    finite_logprobs = logprobs.masked_fill(torch.isneginf(logits), 0.0)  # 0 * (-inf) would be nan
    return -(probs * finite_logprobs).sum(dim=-1)  # (B, T)


def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(old || new) per token, estimated on tokens sampled from the old policy: the k3 estimator; a scalar.

    Schulman (2020), "Approximating KL divergence": for x ~ q, r = p(x) / q(x), k3 = (r - 1) - log r estimates
    KL(q || p) without bias and is never negative (log r <= r - 1). Here q = the old (sampling) policy and
    p = the current one, so r = exp(logprobs - old_logprobs), the PPO ratio:
        approx_kl = masked mean of (exp(logprobs - old_logprobs) - 1) - (logprobs - old_logprobs).
    Inputs are (B, T) log-probs of the sampled tokens.
    """
    log_ratio = logprobs - old_logprobs  # (B, T): log r
    return masked_mean(torch.expm1(log_ratio) - log_ratio, mask)


@torch.no_grad()
def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both (B, T) and detached: GAE (Schulman et al. 2016, eq. 16) over response tokens.

        delta_t = r_t + gamma * V_{t+1} - V_t,   with V = 0 after a row's last response token
        A_t = sum_l (gamma * lam)^l delta_{t+l} = delta_t + gamma * lam * A_{t+1}
        returns_t = A_t + V_t   (the lambda-return: the value target)

    Padding is zeroed before the recursion, so the value and the reward of a pad never reach a real token: past
    a row's last token, V_{t+1} and A_{t+1} are both 0. Masked positions of both outputs are 0.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask  # (B, T), (B, T)
    advantages = torch.zeros_like(values)  # (B, T)
    next_value = torch.zeros_like(values[:, 0])  # (B,): V_{t+1}, 0 past the end
    next_advantage = torch.zeros_like(values[:, 0])  # (B,): A_{t+1}
    # A reversed loop over T (short for responses), vectorised over the batch.
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]  # (B,): A_t, 0 on padding
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    returns = (advantages + values) * mask  # (B, T)
    return advantages, returns


@torch.no_grad()
def leave_one_out_scores(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) scores less the mean of their group's other scores (Kool et al. 2019; Ahmadian et al. 2024).

    `scores` holds B / group_size groups of `group_size` answers to one prompt each, contiguous. A per-prompt
    baseline: an answer is judged against its siblings, not against answers to easier prompts. Loop form:
    out[i] = s[i] - (sum(group(i)) - s[i]) / (k - 1). `group_size` 1 returns the scores unchanged.
    """
    if group_size == 1:
        return scores
    if group_size < 1 or scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} scores do not split into groups of {group_size}")
    groups = scores.view(-1, group_size)  # (B / k, k)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)  # (B / k, k)
    return (groups - others).view(-1)


@torch.no_grad()
def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards, kl), both (B, T) and detached: per-token RLHF rewards with the KL penalty.

    Stiennon et al. (2020), eq. 2 (after Ziegler et al. 2019): R(x, y) = r(x, y) - beta * log[pi(y|x) / pi_ref(y|x)].
    Spread over tokens: kl_t = logprobs_t - ref_logprobs_t (the k1 estimate of KL(policy || reference) on tokens
    sampled from the policy, as `models.metrics.sampled_kl`), rewards_t = -kl_coef * kl_t, and the sequence
    score (B,) is added at each row's last response token. Masked positions of both outputs are 0.
    Raises ValueError if a row has no response token (its score would have nowhere to go).
    """
    mask = mask.to(logprobs.dtype)
    if scores.shape != mask.shape[:1]:
        raise ValueError(f"scores must have shape ({mask.shape[0]},), got {tuple(scores.shape)}")
    if bool((mask.sum(dim=-1) == 0).any()):
        raise ValueError("every row needs at least one response token in mask to receive its score")
    kl = (logprobs - ref_logprobs) * mask  # (B, T)
    rewards = -kl_coef * kl  # (B, T)
    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    last = (positions * mask).argmax(dim=-1)  # (B,): index of the last 1 (0 when only t = 0 is kept)
    # Loop form: for i in range(B): rewards[i, last[i]] += scores[i]
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += scores.to(rewards.dtype)
    return rewards, kl


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, clip_fraction, approx_kl): the clipped surrogate of Schulman et al. (2017), eq. 7, as a loss.

    r_t = exp(logprobs_t - old_logprobs_t); L^CLIP = E_t[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)], so
        loss = masked mean over all response tokens of max(-A_t r_t, -A_t clip(r_t, 1 - eps, 1 + eps)).
    clip_fraction is the share of tokens where the clipped term is strictly the larger loss (its gradient is 0
    there); approx_kl is `approx_kl(logprobs, old_logprobs, mask)`, KL(old || new). Both are detached.
    `old_logprobs` and `advantages` come from the rollout and must carry no gradient.
    """
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)  # (B, T)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
        kl = approx_kl(logprobs, old_logprobs, mask)
    return loss, clip_fraction, kl


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, value_clip_fraction): PPO's value loss (Schulman et al. 2017, eq. 9, (V - V_targ)^2), clipped
    around the rollout's values as in the authors' reference code (OpenAI baselines, ppo2):

    V_clip = old_values + clip(values - old_values, -eps, eps);
        loss = 0.5 * masked mean of max((V - R)^2, (V_clip - R)^2).
    value_clip_fraction (detached) is the share of tokens where the clipped error is strictly the larger.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)  # (B, T)
    unclipped_error = (values - returns) ** 2  # (B, T)
    clipped_error = (clipped_values - returns) ** 2  # (B, T)
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_error > unclipped_error).to(values.dtype), mask)
    return loss, clip_fraction


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[R - V] / Var[R] over unmasked positions: 1 for perfect values, 0 for a constant guess at the mean,
    negative for worse. nan when the returns do not vary (the ratio is undefined); ValueError for an empty mask.
    """
    returns_variance = masked_var(returns, mask, unbiased=False)
    if returns_variance.item() == 0:
        return float("nan")
    return (1 - masked_var(returns - values, mask, unbiased=False) / returns_variance).item()


# --- Safe RLHF's cost model (Dai et al. 2023) ------------------------------------------------------------


def cost_model_loss(
    safer_costs: torch.Tensor,
    unsafer_costs: torch.Tensor,
    safer_signs: torch.Tensor,
    unsafer_signs: torch.Tensor,
    ranked: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, pair_accuracy, sign_accuracy): the cost model's loss of Safe RLHF (Dai et al. 2023, eq. 6),

        L_C = -E_ranked[log sigmoid(C(y_unsafer) - C(y_safer))]
              - E[log sigmoid(s(y_unsafer) C(y_unsafer)) + log sigmoid(s(y_safer) C(y_safer))],

    where s(y) = +1 for a harmful answer and -1 for a harmless one, so the classification terms put harmful
    answers above cost 0 and harmless ones below it: 0 is the boundary PPO-Lagrangian's cost limit is read
    against. Every input has shape (N,), one entry per pair. `ranked` is 1 where one answer is the safer and 0
    where neither is (both harmless, as on a benign request): the pairwise expectation runs over ranked pairs
    only, the classification one over every pair. With no ranked pair the pairwise term is 0.

    Loop form: pairwise = sum(-logsig(u - s) for pairs with ranked) / max(1, #ranked);
    classification = sum(-logsig(su * u) - logsig(ss * s) for every pair) / N.
    pair_accuracy (detached): share of ranked pairs with C(unsafer) > C(safer) (nan with none);
    sign_accuracy: share of the 2N answers whose cost has the sign of their label.
    """
    ranked = ranked.to(safer_costs.dtype)
    pairwise = -torch.nn.functional.logsigmoid(unsafer_costs - safer_costs)  # (N,)
    classification = (-torch.nn.functional.logsigmoid(unsafer_signs * unsafer_costs)
                      - torch.nn.functional.logsigmoid(safer_signs * safer_costs))  # (N,)
    loss = masked_mean(pairwise, ranked) + classification.mean()
    with torch.no_grad():
        ranked_pairs = ranked.sum()
        pair_accuracy = (masked_sum((unsafer_costs > safer_costs).to(ranked.dtype), ranked) / ranked_pairs
                         if ranked_pairs > 0 else torch.tensor(float("nan")))
        signs_right = torch.cat([unsafer_signs * unsafer_costs > 0, safer_signs * safer_costs > 0])  # (2N,)
        sign_accuracy = signs_right.to(safer_costs.dtype).mean()
    return loss, pair_accuracy, sign_accuracy


# --- DPO (Rafailov et al. 2023) -----------------------------------------------------------------------------


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, reward_accuracy): DPO's sigmoid loss over N pairs of sequence log-probs (each (N,)), eq. 7:

    margin_i = beta * ((pi_c - ref_c) - (pi_r - ref_r)); loss = mean over i of -log sigmoid(margin_i).
    reward_accuracy (detached) is the share of pairs whose margin is positive. The pipeline trains DPO with TRL's
    DPOTrainer (tasks/dpo.py); this is the same loss for timing `models/` steps (benchmarks/training_step_benchmark.py).
    """
    margins = beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))  # (N,)
    loss = -torch.nn.functional.logsigmoid(margins).mean()
    return loss, (margins.detach() > 0).float().mean()
