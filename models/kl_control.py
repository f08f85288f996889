"""The KL coefficient beta of RLHF's reward R = r - beta * KL(policy || reference): fixed or adaptive.

Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences", sec. 2.2: to hold the KL near a
target, beta is updated with a log-space proportional controller,

    e_t = clip(KL_t / KL_target - 1, -0.2, 0.2),    beta_{t+1} = beta_t * (1 + K_beta * e_t),

with K_beta = n_steps / horizon as in their code (lm-human-preferences, `AdaptiveKLController`): the more
samples a step took, the larger the correction, and `horizon` samples at a saturated error change beta by
about e^{±0.2}.
"""

from __future__ import annotations

from typing import Any, Literal

KLControllerKind = Literal["fixed", "adaptive"]


class FixedKLController:
    """A constant coefficient: `update` does nothing."""

    kind = "fixed"

    def __init__(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"the KL coefficient must be >= 0, got {value}")
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: the coefficient is fixed."""

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = _restored_value(state, self.kind)


class AdaptiveKLController:
    """Ziegler et al. (2019), sec. 2.2: move `value` so the measured KL tracks `target`."""

    kind = "adaptive"

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {init_kl_coef}")
        if target <= 0:
            raise ValueError(f"the KL target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"the KL horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """value *= 1 + clip(current_kl / target - 1, -0.2, 0.2) * n_steps / horizon."""
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        """The coefficient, and (for the record) the target and horizon it was steered with."""
        return {"kind": self.kind, "value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the coefficient; target and horizon stay as constructed (they come from the config)."""
        self.value = _restored_value(state, self.kind)


def build_kl_controller(
    kind: KLControllerKind, init_kl_coef: float, target: float | None, horizon: int
) -> FixedKLController | AdaptiveKLController:
    """The controller named by `kind`; a fixed one ignores `target` and `horizon`."""
    if kind == "fixed":
        return FixedKLController(init_kl_coef)
    if kind == "adaptive":
        if target is None:
            raise ValueError("an adaptive KL controller needs a target KL")
        return AdaptiveKLController(init_kl_coef, target, horizon)
    raise ValueError(f"unknown KL controller kind {kind!r}; expected 'fixed' or 'adaptive'")


def _restored_value(state: dict[str, Any], kind: str) -> float:
    if state.get("kind") != kind:
        raise ValueError(f"cannot load a {state.get('kind')!r} KL controller state into a {kind!r} controller")
    if "value" not in state:
        raise ValueError(f"KL controller state has no 'value': {state}")
    return float(state["value"])
