import math

import pytest
import torch

from models.metrics import sampled_kl, win_rate


def test_win_rate_by_hand():
    policy = torch.tensor([1.0, 0.5, 2.0, -1.0])
    baseline = torch.tensor([0.0, 0.5, 3.0, -2.0])
    # wins: 1 > 0 (1), 0.5 == 0.5 (tie, 0.5), 2 < 3 (0), -1 > -2 (1) -> 2.5 / 4 = 0.625
    assert win_rate(policy, baseline) == 0.625


def test_win_rate_rejects_mismatched_or_empty_scores():
    with pytest.raises(ValueError):
        win_rate(torch.tensor([1.0]), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError):
        win_rate(torch.tensor([]), torch.tensor([]))


def test_sampled_kl_by_hand():
    policy = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -0.2, -9.0]])  # log pi of each sampled token
    reference = torch.tensor([[-1.5, -1.0, -0.5], [-0.3, -0.4, -1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # row 1 ended after two tokens: its third is padding
    # row 0: 0.5 - 1.0 + 0.0 = -0.5 (a single answer's estimate may be negative); row 1: 0.2 + 0.2 = 0.4
    assert torch.allclose(sampled_kl(policy, reference, mask), torch.tensor([-0.5, 0.4]))


def test_kl_of_a_model_with_itself_is_zero_and_shapes_must_agree():
    logprobs = torch.randn(3, 4)
    assert torch.equal(sampled_kl(logprobs, logprobs, torch.ones(3, 4)), torch.zeros(3))
    with pytest.raises(ValueError, match="same tokens"):
        sampled_kl(torch.zeros(3, 4), torch.zeros(3, 4), torch.ones(3, 3))


def test_repeated_ngram_rate_by_hand():
    from models.metrics import repeated_ngram_rate

    # "a b c a b c": trigrams abc, bca, cab, abc -> 4 trigrams, 3 distinct, 1 repeat: 1/4.
    assert repeated_ngram_rate(["a", "b", "c", "a", "b", "c"]) == 0.25
    # "go go go go go": trigrams (go go go) x3 -> 3 trigrams, 1 distinct, 2 repeats: 2/3.
    assert repeated_ngram_rate(["go"] * 5) == pytest.approx(2 / 3)
    # No trigram repeats in an ordinary sentence; fewer than three words means no trigram at all.
    assert repeated_ngram_rate(["I", "can't", "help", "with", "picking", "that", "lock."]) == 0.0
    assert repeated_ngram_rate(["too", "short"]) == 0.0
    # Bigrams of "x y x y": xy, yx, xy -> 3 bigrams, 2 distinct: 1/3.
    assert repeated_ngram_rate(["x", "y", "x", "y"], n=2) == pytest.approx(1 / 3)


def test_pooled_perplexity_by_hand():
    from models.scoring import pooled_perplexity

    # Two completions: log p sums -2 (1 token) and -4 (3 tokens). Pooled NLL per token = (2 + 4) / (1 + 3) = 1.5,
    # so perplexity = e^1.5 = 4.4817; the first alone is e^2 = 7.389 (pooling is over tokens, not completions).
    sums, counts = torch.tensor([-2.0, -4.0]), torch.tensor([1, 3])
    assert pooled_perplexity(sums, counts) == pytest.approx(math.exp(1.5))
    assert pooled_perplexity(sums[:1], counts[:1]) == pytest.approx(math.exp(2.0))
    with pytest.raises(ValueError, match="at least one completion token"):
        pooled_perplexity(sums[:0], counts[:0])


def test_wilson_interval_by_hand():
    from models.metrics import wilson_interval

    # 50/100: p = 0.5, z² = 3.8416; centre (0.5 + 0.019208) / 1.038416 = 0.5;
    # half 1.96·sqrt(0.0025 + 0.00009604) / 1.038416 = 1.96·0.0509511 / 1.038416 = 0.0961702.
    low, high = wilson_interval(50, 100)
    assert (low, high) == pytest.approx((0.4038298, 0.5961702), abs=1e-6)
    # 0/10: centre = half = (3.8416/20) / 1.38416 = 0.1387701, so [0, 0.2775402]; n/n mirrors it.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775402), abs=1e-6)
    assert wilson_interval(10, 10) == pytest.approx((0.7224598, 1.0), abs=1e-6)


def test_wilson_interval_rejects_impossible_counts():
    from models.metrics import wilson_interval

    for successes, trials in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError, match="successes <= trials"):
            wilson_interval(successes, trials)


def test_mean_bound_by_hand():
    from models.metrics import mean_bound

    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, sd sqrt(((1.5^2 + 0.5^2) * 2) / 3) = sqrt(5/3) = 1.2910; t(0.95, 3) = 2.3534 (tables);
    # half-width 2.3534 * 1.2910 / 2 = 1.5191.
    assert mean_bound(values, 0.95, "lower") == pytest.approx(2.5 - 1.5191, abs=1e-4)
    assert mean_bound(values, 0.95, "upper") == pytest.approx(2.5 + 1.5191, abs=1e-4)
    assert mean_bound(torch.full((5,), 0.3), 0.95, "lower") == pytest.approx(0.3)  # no spread: the mean itself
    with pytest.raises(ValueError, match="at least 2 values"):
        mean_bound(torch.tensor([1.0]), 0.95, "lower")
    with pytest.raises(ValueError, match="side"):
        mean_bound(values, 0.95, "both")
    with pytest.raises(ValueError, match="confidence"):
        mean_bound(values, 1.0, "lower")


def test_rate_bound_is_the_one_sided_wilson_end():
    from models.metrics import rate_bound

    z2 = 1.6448536**2  # the one-sided 95% normal quantile, squared
    # All n successes: the lower end is n / (n + z^2); none: the upper end is z^2 / (n + z^2).
    assert rate_bound(32, 32, 0.95, "lower") == pytest.approx(32 / (32 + z2))
    assert rate_bound(0, 32, 0.95, "upper") == pytest.approx(z2 / (32 + z2))
    assert rate_bound(0, 32, 0.95, "lower") == 0.0


def test_rogan_gladen_by_hand():
    from models.metrics import rogan_gladen

    # A perfect instrument changes nothing; one that misses a tenth of refusals (sensitivity 0.9) and calls 5% of
    # answers refusals wrongly (specificity 0.95) reads a true 0.5 as 0.5 * 0.9 + 0.5 * 0.05 = 0.475.
    assert rogan_gladen(0.3, 1.0, 1.0) == pytest.approx(0.3)
    assert rogan_gladen(0.475, 0.9, 0.95) == pytest.approx(0.5)
    assert rogan_gladen(0.01, 0.9, 0.95) == 0.0  # below the false-positive floor: clipped
    assert rogan_gladen(0.99, 0.9, 0.95) == 1.0
    with pytest.raises(ValueError, match="sensitivity \\+ specificity > 1"):
        rogan_gladen(0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="observed must be in"):
        rogan_gladen(1.5, 0.9, 0.9)
