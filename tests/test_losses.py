import torch

from models.losses import masked_mean, masked_sum


def test_masked_sum_and_mean_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    # sum over kept positions: 1 + 2 + 5 + 6 = 14; there are 4 of them -> mean 3.5
    assert masked_sum(values, mask).item() == 14.0
    assert masked_mean(values, mask).item() == 3.5
    # per row: (1 + 2) / 2 = 1.5 and (5 + 6) / 2 = 5.5
    assert masked_mean(values, mask, dim=1).tolist() == [1.5, 5.5]


def test_masked_mean_of_an_empty_mask_is_zero_not_nan():
    assert masked_mean(torch.tensor([1.0, 2.0]), torch.tensor([0, 0])).item() == 0.0
