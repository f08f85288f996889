import math

import pytest
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


# --- Safe RLHF's cost model loss (Dai et al. 2023, eq. 6) --------------------------------------------
# sigmoid(ln 3) = 3/4 and sigmoid(-ln 3) = 1/4, so -log sigmoid gives ln(4/3) and ln 4; -log sigmoid(0) = ln 2.
LN3 = math.log(3.0)


def test_cost_model_loss_by_hand():
    from models.losses import cost_model_loss

    # Pair 1: a harmful request; the safer answer costs -ln 3 (sign -1, safe), the unsafer 0 (sign +1, unsafe).
    # Pair 2: a benign request, both safe (signs -1), neither safer: it adds classification terms only.
    safer = torch.tensor([-LN3, LN3])
    unsafer = torch.tensor([0.0, -LN3])
    safer_signs, unsafer_signs, ranked = torch.tensor([-1.0, -1.0]), torch.tensor([1.0, -1.0]), torch.tensor([1, 0])
    loss, pair_accuracy, sign_accuracy = cost_model_loss(safer, unsafer, safer_signs, unsafer_signs, ranked)
    # pairwise, over the one ranked pair: -log sigmoid(0 - (-ln 3)) = ln(4/3)
    # classification, pair 1: -log sigmoid(+1 * 0) - log sigmoid(-1 * -ln 3) = ln 2 + ln(4/3)
    #                 pair 2: -log sigmoid(-1 * -ln 3) - log sigmoid(-1 * ln 3) = ln(4/3) + ln 4
    #   mean over the 2 pairs: (3 ln 2 + 2 ln(4/3)) / 2
    expected = math.log(4 / 3) + (3 * math.log(2) + 2 * math.log(4 / 3)) / 2  # = 1.615085
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert pair_accuracy.item() == 1.0  # 0 > -ln 3 on the ranked pair; pair 2's -ln 3 < ln 3 is not counted
    # signs right: pair 1 safer (ln 3 > 0) and pair 2 unsafer (ln 3 > 0); a cost of exactly 0 is not right: 2 of 4
    assert sign_accuracy.item() == 0.5


def test_cost_model_loss_without_a_ranked_pair_is_the_classification_alone():
    from models.losses import cost_model_loss

    costs = torch.tensor([LN3])
    loss, pair_accuracy, _ = cost_model_loss(costs, -costs, torch.tensor([-1.0]), torch.tensor([-1.0]),
                                             torch.tensor([0]))
    # -log sigmoid(-ln 3) - log sigmoid(ln 3) = ln 4 + ln(4/3); the pairwise -log sigmoid(-2 ln 3) is left out
    assert loss.item() == pytest.approx(math.log(4) + math.log(4 / 3), abs=1e-6)
    assert math.isnan(pair_accuracy.item())


def test_cost_model_loss_pushes_unsafe_answers_up_and_safe_ones_down():
    from models.losses import cost_model_loss

    safer, unsafer = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    loss, _, _ = cost_model_loss(safer, unsafer, torch.tensor([-1.0]), torch.tensor([1.0]), torch.tensor([1]))
    loss.backward()
    # d/dc of -log sigmoid(c) at 0 is -1/2 (pairwise and classification alike): descent raises the unsafer cost
    assert unsafer.grad.item() == pytest.approx(-1.0) and safer.grad.item() == pytest.approx(1.0)


# --- DPO's sigmoid loss (Rafailov et al. 2023, eq. 7) ------------------------------------------------------


def test_dpo_loss_by_hand():
    from models.losses import dpo_loss

    # Pair 1: the policy moved up on chosen (-10 -> -8) and down on rejected (-12 -> -12 - ln 3 / 0.5 + 2):
    #   margin = 0.5 * ((-8 + 10) - (-12 - 2 ln 3 + 2 + 12)) = 0.5 * (2 - 2 + 2 ln 3) = ln 3 -> -log sigmoid = ln(4/3)
    # Pair 2: the policy is the reference: margin 0 -> ln 2 (and it is not counted as right)
    policy_chosen = torch.tensor([-8.0, -5.0])
    policy_rejected = torch.tensor([-12.0 - 2 * LN3 + 2.0, -7.0])
    reference_chosen, reference_rejected = torch.tensor([-10.0, -5.0]), torch.tensor([-12.0, -7.0])
    loss, accuracy = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.5)
    assert loss.item() == pytest.approx((math.log(4 / 3) + math.log(2)) / 2, abs=1e-6)
    assert accuracy.item() == 0.5
