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
    policy = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -0.2, -9.0]])
    reference = torch.tensor([[-1.5, -1.0, -0.5], [-0.3, -0.2, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    # row 0: (-1 - -1.5) + (-2 - -1) = 0.5 - 1.0 = -0.5 ; the third token is masked out
    # row 1: (-0.1 - -0.3) + (-0.2 - -0.2) = 0.2 + 0 = 0.2 ; the -9 vs -1 token is masked out
    assert torch.allclose(sequence_kl(policy, reference, mask), torch.tensor([-0.5, 0.2]))


def test_kl_of_a_model_with_itself_is_zero():
    logprobs = torch.randn(3, 5)
    assert torch.equal(sequence_kl(logprobs, logprobs, torch.ones(3, 5)), torch.zeros(3))
