"""PPO maths worked out by hand: whitening, entropy, the KL estimators, GAE, reward shaping, the clipped losses."""

import math

import pytest
import torch

from models.losses import (
    approx_kl,
    entropy_from_logits,
    explained_variance,
    gae_advantages,
    kl_penalized_rewards,
    leave_one_out_scores,
    masked_var,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)
from models.metrics import sampled_kl

LN2 = math.log(2.0)


# --- masked_var / masked_whiten -------------------------------------------------------------------------

VALUES = torch.tensor([[2.0, 4.0, 100.0], [6.0, -50.0, 7.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])
# kept: 2, 4, 6 -> mean 4; deviations -2, 0, 2; squares 4 + 0 + 4 = 8
# unbiased variance 8 / (3 - 1) = 4 (std 2); biased 8 / 3


def test_masked_var_by_hand():
    assert masked_var(VALUES, MASK).item() == pytest.approx(4.0)
    assert masked_var(VALUES, MASK, unbiased=False).item() == pytest.approx(8 / 3)


def test_masked_var_needs_enough_values():
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(VALUES, torch.tensor([[1, 0, 0], [0, 0, 0]]))  # one value: n - 1 = 0
    with pytest.raises(ValueError, match="at least 1"):
        masked_var(VALUES, torch.zeros(2, 3), unbiased=False)


def test_masked_whiten_by_hand():
    # (x - 4) / 2: 2 -> -1, 4 -> 0, 6 -> 1; the masked 100, -50, 7 come back as 0
    expected = torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert torch.allclose(masked_whiten(VALUES, MASK), expected)
    # shift_mean=False adds the mean 4 back: -1 + 4 = 3, 0 + 4 = 4, 1 + 4 = 5; padding still 0
    expected_unshifted = torch.tensor([[3.0, 4.0, 0.0], [5.0, 0.0, 0.0]])
    assert torch.allclose(masked_whiten(VALUES, MASK, shift_mean=False), expected_unshifted)


# --- entropy_from_logits --------------------------------------------------------------------------------

def test_entropy_of_uniform_is_log_v_even_for_huge_logits():
    # all logits equal -> p = 1/8 each -> H = -8 * (1/8) log(1/8) = log 8; a shift of 1e4 must not overflow
    for shift in (0.0, 1e4):
        logits = torch.full((2, 3, 8), shift)
        assert torch.allclose(entropy_from_logits(logits), torch.full((2, 3), math.log(8)))


def test_entropy_of_one_hot_is_zero_and_a_two_token_value_by_hand():
    one_hot = torch.tensor([[[100.0, 0.0, 0.0, 0.0]]])
    # p = (1 - 3e, e, e, e) with e = e^-100: H ~ 3 * 100 * e^-100 ~ 1e-41
    assert entropy_from_logits(one_hot).abs().item() < 1e-6
    # logits (log 1, log 3) -> p = (1/4, 3/4):
    # H = 1/4 log 4 + 3/4 log(4/3) = 0.25 * 1.386294 + 0.75 * 0.287682 = 0.346574 + 0.215762 = 0.562335
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert entropy_from_logits(logits).item() == pytest.approx(0.562335, abs=1e-6)


def test_entropy_ignores_filtered_tokens_with_finite_gradient():
    # a -inf logit (top-k filtered) has p = 0 and adds 0 * log 0 = 0: two live tokens -> log 2
    logits = torch.tensor([[[0.0, 0.0, -math.inf]]], requires_grad=True)
    entropy = entropy_from_logits(logits)
    assert entropy.item() == pytest.approx(LN2)
    entropy.sum().backward()
    assert torch.isfinite(logits.grad).all()


# --- approx_kl: k3 for KL(old || new) -------------------------------------------------------------------

def test_approx_kl_is_zero_for_equal_policies():
    logprobs = torch.randn(2, 4)
    assert approx_kl(logprobs, logprobs, torch.ones(2, 4)).item() == 0.0


def test_approx_kl_by_hand():
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    new = torch.tensor([[-1.0 + LN2, -1.0 - LN2, -9.0]])
    mask = torch.tensor([[1, 1, 0]])
    # log r = new - old: ln 2 and -ln 2 (the -8 is masked out)
    # k3 = (r - 1) - log r: (2 - 1) - ln 2 = 0.306853 and (0.5 - 1) + ln 2 = 0.193147
    # mean (0.306853 + 0.193147) / 2 = 0.5 / 2 = 0.25 (the ln 2 terms cancel)
    assert approx_kl(new, old, mask).item() == pytest.approx(0.25)


def test_approx_kl_direction_is_old_to_new_under_samples_from_old():
    # Two tokens, old q = (1/2, 1/2), new p = (1/4, 3/4); each token is drawn from q with probability 1/2, so
    # the masked mean over them is exactly the expectation under q.
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.25, 0.75]]))
    # r = p / q: 0.5 -> k3 = -0.5 + ln 2 = 0.193147; 1.5 -> k3 = 0.5 - ln 1.5 = 0.094535; mean 0.143841
    # KL(q || p) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3) = 0.143841      <- matches
    # KL(p || q) = 0.25 ln(0.25/0.5) + 0.75 ln(0.75/0.5) = -0.173287 + 0.304099 = 0.130812
    assert approx_kl(new, old, torch.ones(1, 2)).item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)


# --- gae_advantages -------------------------------------------------------------------------------------

REWARDS = torch.tensor([[0.1, -0.2, 1.0]])
STATE_VALUES = torch.tensor([[0.5, 0.2, 0.4]])


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    advantages, returns = gae_advantages(REWARDS, STATE_VALUES, torch.ones(1, 3), gamma=1.0, lam=1.0)
    # reward-to-go: 0.1 - 0.2 + 1.0 = 0.9, -0.2 + 1.0 = 0.8, 1.0
    # advantages: 0.9 - 0.5 = 0.4, 0.8 - 0.2 = 0.6, 1.0 - 0.4 = 0.6; returns = advantages + values = reward-to-go
    assert torch.allclose(advantages, torch.tensor([[0.4, 0.6, 0.6]]))
    assert torch.allclose(returns, torch.tensor([[0.9, 0.8, 1.0]]))


def test_gae_step_by_step():
    advantages, returns = gae_advantages(REWARDS, STATE_VALUES, torch.ones(1, 3), gamma=0.9, lam=0.95)
    # gamma * lam = 0.855; V after the last token is 0
    # t=2: delta = 1.0 + 0.9 * 0 - 0.4 = 0.6;             A = 0.6
    # t=1: delta = -0.2 + 0.9 * 0.4 - 0.2 = -0.04;        A = -0.04 + 0.855 * 0.6 = 0.473
    # t=0: delta = 0.1 + 0.9 * 0.2 - 0.5 = -0.22;         A = -0.22 + 0.855 * 0.473 = 0.184415
    # returns = A + V: 0.684415, 0.673, 1.0
    assert torch.allclose(advantages, torch.tensor([[0.184415, 0.473, 0.6]]))
    assert torch.allclose(returns, torch.tensor([[0.684415, 0.673, 1.0]]))


def test_gae_padding_does_not_leak():
    rewards = torch.tensor([[0.1, -0.2, 1.0], [0.5, 1.0, 7.0]])
    values = torch.tensor([[0.5, 0.2, 0.4], [0.3, 0.6, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # row 1 is two tokens long; its 7.0 and 9.0 are padding
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.95)
    # row 0 is the step-by-step example above
    # row 1: t=1: delta = 1.0 + 0.9 * 0 - 0.6 = 0.4 (not 0.9 * 9.0); A = 0.4
    #        t=0: delta = 0.5 + 0.9 * 0.6 - 0.3 = 0.74;            A = 0.74 + 0.855 * 0.4 = 1.082
    #        returns: 1.082 + 0.3 = 1.382, 0.4 + 0.6 = 1.0, padding 0
    assert torch.allclose(advantages, torch.tensor([[0.184415, 0.473, 0.6], [1.082, 0.4, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[0.684415, 0.673, 1.0], [1.382, 1.0, 0.0]]))
    # whatever the padding holds, the answer is the same as for the row on its own
    rewards[1, 2], values[1, 2] = -1e6, 1e6
    again, _ = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.95)
    alone, _ = gae_advantages(rewards[1:, :2], values[1:, :2], torch.ones(1, 2), gamma=0.9, lam=0.95)
    assert torch.equal(again, advantages) and torch.equal(again[1:, :2], alone)


def test_gae_outputs_are_detached():
    values = STATE_VALUES.clone().requires_grad_()
    advantages, returns = gae_advantages(REWARDS, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert not advantages.requires_grad and not returns.requires_grad


# --- kl_penalized_rewards -------------------------------------------------------------------------------

def test_kl_penalized_rewards_put_the_score_on_each_rows_last_token():
    scores = torch.tensor([2.0, -1.0, 0.5])
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -0.2, -9.0], [-2.0, -3.0, -4.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5], [-0.3, -0.2, -1.0], [-1.0, -5.0, -6.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])  # lengths 3, 2, 1
    rewards, kl = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1)
    # kl = logprobs - ref on response tokens:
    #   row 0: -1 + 1.5 = 0.5, -2 + 1 = -1.0, -0.5 + 0.5 = 0.0
    #   row 1: -0.1 + 0.3 = 0.2, 0.0, padding 0 (not -9 + 1 = -8)
    #   row 2: -2 + 1 = -1.0, padding 0, padding 0
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0], [0.2, 0.0, 0.0], [-1.0, 0.0, 0.0]]))
    # rewards = -0.1 * kl, plus the score at the last response token (t = 2, 1, 0):
    #   row 0: -0.05, 0.1, 0.0 + 2.0 = 2.0
    #   row 1: -0.02, 0.0 - 1.0 = -1.0, 0
    #   row 2: 0.1 + 0.5 = 0.6, 0, 0
    expected = torch.tensor([[-0.05, 0.1, 2.0], [-0.02, -1.0, 0.0], [0.6, 0.0, 0.0]])
    assert torch.allclose(rewards, expected)
    # summed over a row: Stiennon et al. eq. 2, R = score - beta * sum_t kl_t (k1 sequence KL)
    assert torch.allclose(rewards.sum(-1), scores - 0.1 * sampled_kl(logprobs, ref_logprobs, mask))


def test_kl_penalized_rewards_reject_an_empty_row_or_misshapen_scores():
    logprobs = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="at least one response token"):
        kl_penalized_rewards(torch.zeros(2), logprobs, logprobs, torch.tensor([[1, 1, 0], [0, 0, 0]]), 0.1)
    with pytest.raises(ValueError, match="scores must have shape"):
        kl_penalized_rewards(torch.zeros(3), logprobs, logprobs, torch.ones(2, 3), 0.1)


# --- leave_one_out_scores ------------------------------------------------------------------------------

def test_leave_one_out_scores_by_hand():
    scores = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])  # two prompts, three answers each
    # group 1: 1 - (2 + 3) / 2 = -1.5, 2 - (1 + 3) / 2 = 0, 3 - (1 + 2) / 2 = 1.5
    # group 2: every answer equals its siblings: 0 (a prompt scored alike whatever is said teaches nothing)
    assert torch.allclose(leave_one_out_scores(scores, 3), torch.tensor([-1.5, 0.0, 1.5, 0.0, 0.0, 0.0]))
    assert torch.equal(leave_one_out_scores(scores, 1), scores)


def test_leave_one_out_scores_need_whole_groups():
    with pytest.raises(ValueError, match="6 scores do not split into groups of 4"):
        leave_one_out_scores(torch.zeros(6), 4)


# --- ppo_policy_loss ------------------------------------------------------------------------------------

def test_policy_loss_clip_fraction_kl_and_gradient_by_hand():
    ratios = torch.tensor([[1.1, 1.5, 0.5], [0.5, 3.0, 3.0]])
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-2.0, 10.0, 10.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    old = torch.full((2, 3), -2.0)
    logprobs = (old + ratios.log()).requires_grad_()
    loss, clip_fraction, kl = ppo_policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    # per token, -A r vs -A clip(r, 0.8, 1.2), keep the larger:
    #   r=1.1, A=1:  -1.1 vs -1.1            -> -1.1 (inside the range)
    #   r=1.5, A=1:  -1.5 vs -1.2            -> -1.2 (clipped)
    #   r=0.5, A=1:  -0.5 vs -0.8            -> -0.5 (outside the range, but the unclipped term is the max)
    #   r=0.5, A=-2:  1.0 vs  1.6            ->  1.6 (clipped)
    # loss = (-1.1 - 1.2 - 0.5 + 1.6) / 4 = -1.2 / 4 = -0.3; clipped on 2 of 4 tokens -> 0.5
    assert loss.item() == pytest.approx(-0.3)
    assert clip_fraction.item() == pytest.approx(0.5)
    # k3 = (r - 1) - ln r summed: (0.1 + 0.5 - 0.5 - 0.5) - ln(1.1 * 1.5 * 0.5 * 0.5)
    #    = -0.4 - ln 0.4125 = -0.4 + 0.885519 = 0.485519; / 4 = 0.121380
    assert kl.item() == pytest.approx(0.121380, abs=1e-6)
    assert not clip_fraction.requires_grad and not kl.requires_grad
    loss.backward()
    # d(-A r)/d logprob = -A r, over 4 tokens: -1.1/4 = -0.275 and -0.5/4 = -0.125; clipped tokens get 0,
    # and so do the masked ones
    assert torch.allclose(logprobs.grad, torch.tensor([[-0.275, 0.0, -0.125], [0.0, 0.0, 0.0]]))


def test_policy_gradient_raises_good_tokens_and_lowers_bad_ones():
    old = torch.tensor([[-1.0, -1.0]])
    logprobs = old.clone().requires_grad_()  # r = 1: the first epoch on fresh samples
    loss, clip_fraction, _ = ppo_policy_loss(logprobs, old, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), 0.2)
    # loss = mean(-1 * 1, 1 * 1) = 0; gradient -A/2: -0.5 for A = 1, +0.5 for A = -1
    assert loss.item() == 0.0 and clip_fraction.item() == 0.0
    loss.backward()
    assert torch.equal(logprobs.grad, torch.tensor([[-0.5, 0.5]]))  # descent raises the first, lowers the second


# --- ppo_value_loss -------------------------------------------------------------------------------------

def test_value_loss_clipped_vs_unclipped():
    values = torch.tensor([[1.0, 1.5, 1.5, 10.0]], requires_grad=True)
    old_values = torch.tensor([[0.9, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 2.0, 1.0, -10.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clip_fraction = ppo_value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    # clipped V = old + clip(V - old, -0.2, 0.2): 1.0 (within), 1.2, 1.2
    #   token 0: (1.0 - 2)^2 = 1    vs (1.0 - 2)^2 = 1     -> 1    (equal: not counted as clipped)
    #   token 1: (1.5 - 2)^2 = 0.25 vs (1.2 - 2)^2 = 0.64  -> 0.64 (clipped)
    #   token 2: (1.5 - 1)^2 = 0.25 vs (1.2 - 1)^2 = 0.04  -> 0.25
    # loss = 0.5 * (1 + 0.64 + 0.25) / 3 = 0.5 * 0.63 = 0.315; clip fraction 1/3
    assert loss.item() == pytest.approx(0.315)
    assert clip_fraction.item() == pytest.approx(1 / 3)
    loss.backward()
    # d/dV of 0.5 (V - R)^2 / 3 = (V - R) / 3: -1/3 and (1.5 - 1) / 3 = 1/6; the clipped token gets 0
    assert torch.allclose(values.grad, torch.tensor([[-1 / 3, 0.0, 1 / 6, 0.0]]))
    # a range wide enough never clips: 0.5 * (1 + 0.25 + 0.25) / 3 = 0.25
    wide, wide_fraction = ppo_value_loss(values, old_values, returns, mask, clip_range_value=10.0)
    assert wide.item() == pytest.approx(0.25) and wide_fraction.item() == 0.0


# --- explained_variance ---------------------------------------------------------------------------------

def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # perfect values: Var[R - V] = 0 -> 1 (the masked 50 is ignored)
    assert explained_variance(torch.tensor([[1.0, 2.0, 3.0, -7.0]]), returns, mask) == 1.0
    # the mean as a guess: R - V = (-1, 0, 1), the same spread as R -> 1 - 1 = 0
    assert explained_variance(torch.tensor([[2.0, 2.0, 2.0, 0.0]]), returns, mask) == pytest.approx(0.0)
    # V = 3R overshoots: R - V = -2R, whose variance is 4 Var[R] -> 1 - 4 = -3
    assert explained_variance(3 * returns, returns, mask) == pytest.approx(-3.0)
    # constant returns: no variance to explain
    assert math.isnan(explained_variance(torch.zeros(1, 3), torch.ones(1, 3), torch.ones(1, 3)))
