import pytest
import torch

from models.metrics import sequence_kl, win_rate


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


def test_sequence_kl_by_hand():
    policy = torch.tensor([-3.0, -0.3])  # log pi(y) of two sampled responses
    reference = torch.tensor([-2.5, -0.5])
    # row 0: -3.0 - (-2.5) = -0.5 (a single sample may be negative); row 1: -0.3 - (-0.5) = 0.2
    assert torch.allclose(sequence_kl(policy, reference), torch.tensor([-0.5, 0.2]))


def test_kl_of_a_model_with_itself_is_zero():
    logprobs = torch.randn(3)
    assert torch.equal(sequence_kl(logprobs, logprobs), torch.zeros(3))
    with pytest.raises(ValueError):
        sequence_kl(torch.zeros(3), torch.zeros(2))
