"""The KL coefficient controllers of Ziegler et al. (2019), sec. 2.2, updated by hand."""

import pytest

from models.kl_control import AdaptiveKLController, FixedKLController, build_kl_controller


def test_adaptive_update_above_target_is_clipped():
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    controller.update(current_kl=12.0, n_steps=256)
    # error = 12 / 6 - 1 = 1.0, clipped to 0.2; multiplier 1 + 0.2 * 256 / 10000 = 1 + 0.00512 = 1.00512
    assert controller.value == pytest.approx(0.1 * 1.00512)  # 0.100512


def test_adaptive_update_below_target_decreases():
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    controller.update(current_kl=5.4, n_steps=256)
    # error = 5.4 / 6 - 1 = -0.1 (inside the clip); multiplier 1 - 0.1 * 256 / 10000 = 0.99744
    assert controller.value == pytest.approx(0.1 * 0.99744)  # 0.099744
    controller.update(current_kl=0.0, n_steps=256)
    # error = 0 / 6 - 1 = -1, clipped to -0.2; multiplier 1 - 0.2 * 0.0256 = 0.99488
    assert controller.value == pytest.approx(0.1 * 0.99744 * 0.99488)


def test_adaptive_update_on_target_changes_nothing():
    controller = AdaptiveKLController(init_kl_coef=0.05, target=6.0, horizon=10000)
    controller.update(current_kl=6.0, n_steps=1024)  # error 6 / 6 - 1 = 0 -> multiplier 1
    assert controller.value == 0.05


def test_fixed_controller_never_moves():
    controller = FixedKLController(0.2)
    controller.update(current_kl=100.0, n_steps=10_000)
    assert controller.value == 0.2


def test_state_dict_round_trip():
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    controller.update(current_kl=12.0, n_steps=256)
    resumed = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    resumed.load_state_dict(controller.state_dict())
    assert resumed.value == controller.value and resumed.state_dict() == controller.state_dict()
    fixed = FixedKLController(0.3)
    fixed_again = FixedKLController(0.0)
    fixed_again.load_state_dict(fixed.state_dict())
    assert fixed_again.value == 0.3
    with pytest.raises(ValueError, match="'adaptive'"):
        fixed_again.load_state_dict(controller.state_dict())


def test_build_kl_controller():
    fixed = build_kl_controller("fixed", 0.2, target=None, horizon=10000)
    adaptive = build_kl_controller("adaptive", 0.1, target=6.0, horizon=10000)
    assert isinstance(fixed, FixedKLController) and fixed.value == 0.2
    assert isinstance(adaptive, AdaptiveKLController) and (adaptive.target, adaptive.horizon) == (6.0, 10000)
    with pytest.raises(ValueError, match="unknown KL controller kind 'pid'"):
        build_kl_controller("pid", 0.1, target=6.0, horizon=10000)
    with pytest.raises(ValueError, match="needs a target"):
        build_kl_controller("adaptive", 0.1, target=None, horizon=10000)


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError):
        AdaptiveKLController(init_kl_coef=0.1, target=0.0, horizon=10000)
    with pytest.raises(ValueError):
        AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=0)
    with pytest.raises(ValueError):
        FixedKLController(-0.1)
