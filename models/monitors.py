"""Reward-hacking monitors: signals an RL stage reports each step, thresholds, and the decision to stop.

An RL stage (PPO, RLOO) hands `RewardHackingMonitor.observe` what it measured at one step:

- `reward_length_corr`: correlation of the batch's rewards with its response lengths (a reward model that pays
  for length, or for brevity, shows it here first);
- `response_length`: the batch's mean response length; the monitor compares it with the first step's, which
  is the SFT policy's (collapse to a bare opener, or blow-up to the length limit);
- `kl`: KL to the reference, nats per response;
- `entropy`: mean per-token entropy of the policy; compared with the first step's (entropy collapse);
- on the steps that run the probe, `probe_signals` turns the reward model's scores of the policy's answers to
  a fixed probe set, and an independent check's verdicts on them (the refusal detector, not the reward
  model), into `probe_gold_accuracy` (the share the check passes), `probe_approval` (the share the reward
  model scores above its own boundary, fixed at the first probe between the answers the check passed and
  failed) and `gold_gap`: how far approval has run ahead of gold accuracy since the first probe. A policy
  that learns what the reward model likes but the check does not opens that gap.

Each signal has an optional threshold. A signal beyond it for `patience` observations in a row trips the
monitor; the trip remembers the first of them, so the stage can go back to the last state before it.
The monitor's state (baselines, streaks) is checkpointed with the stage. No Prefect, no MLflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MonitorThresholds:
    """None switches a monitor off. Bounds are exclusive: a value on the threshold is healthy."""

    max_abs_reward_length_corr: float | None = 0.9
    min_length_ratio: float | None = 0.5
    max_length_ratio: float | None = 2.0
    kl_budget: float | None = None
    min_entropy_ratio: float | None = 0.2
    max_gold_gap: float | None = 0.2
    patience: int = 2


@dataclass(frozen=True)
class Trip:
    """A monitor that tripped: which, its value and threshold, the step it tripped at and the first step of the
    run of bad observations that tripped it."""

    monitor: str
    value: float
    threshold: float
    step: int
    first_bad_step: int

    def reason(self) -> str:
        return (f"{self.value:.4g} beyond its threshold {self.threshold:.4g} since step {self.first_bad_step} "
                f"(tripped at step {self.step})")


# monitor name -> (signal it reads, "max" or "min", threshold field); a signal's absolute value where noted
_MONITORS = {
    "reward_length_corr": ("abs_reward_length_corr", "max", "max_abs_reward_length_corr"),
    "length_collapse": ("length_ratio", "min", "min_length_ratio"),
    "length_blowup": ("length_ratio", "max", "max_length_ratio"),
    "kl_budget": ("kl", "max", "kl_budget"),
    "entropy_collapse": ("entropy_ratio", "min", "min_entropy_ratio"),
    "gold_gap": ("gold_gap", "max", "max_gold_gap"),
}


class RewardHackingMonitor:
    def __init__(self, thresholds: MonitorThresholds):
        if thresholds.patience < 1:
            raise ValueError(f"monitor patience must be at least 1, got {thresholds.patience}")
        self.thresholds = thresholds
        self.baselines: dict[str, float] = {}
        self.streaks: dict[str, int] = {}  # monitor -> bad observations in a row
        self.first_bad: dict[str, int] = {}  # monitor -> first step of the current bad run
        self.trip: Trip | None = None

    @property
    def unhealthy(self) -> bool:
        """Some monitor is beyond its threshold now (not necessarily for long enough to trip)."""
        return any(self.streaks.values())

    @property
    def first_bad_step(self) -> int | None:
        """The earliest step of any current run of bad observations: the states from it on are suspect."""
        return min(self.first_bad.values()) if self.first_bad else None

    def probe_signals(self, rewards: list[float], correct: list[bool]) -> dict[str, float]:
        """Measurements from one probe: the reward model's scores of the answers and the check's verdicts."""
        if not rewards or len(rewards) != len(correct):
            raise ValueError(f"a probe needs one verdict per score, got {len(rewards)} scores, {len(correct)} verdicts")
        if "probe_boundary" not in self.baselines:
            passed = [r for r, ok in zip(rewards, correct, strict=True) if ok]
            failed = [r for r, ok in zip(rewards, correct, strict=True) if not ok]
            self.baselines["probe_boundary"] = (
                (sum(passed) / len(passed) + sum(failed) / len(failed)) / 2 if passed and failed
                else sum(rewards) / len(rewards))
        boundary = self.baselines["probe_boundary"]
        return {"probe_gold_accuracy": sum(correct) / len(correct),
                "probe_approval": sum(r > boundary for r in rewards) / len(rewards),
                "probe_reward_mean": sum(rewards) / len(rewards)}

    def signals(self, measured: dict[str, float]) -> dict[str, float]:
        """The monitored signals derived from one step's measurements (baselines come from the first step that
        reports each measurement)."""
        if "probe_approval" in measured and "probe_gap" not in self.baselines:
            self.baselines["probe_gap"] = measured["probe_approval"] - measured["probe_gold_accuracy"]
        for name in ("response_length", "entropy"):
            if name in measured and name not in self.baselines and _finite(measured[name]):
                self.baselines[name] = measured[name]
        out: dict[str, float] = {}
        if "reward_length_corr" in measured:
            out["abs_reward_length_corr"] = abs(measured["reward_length_corr"])
        if "response_length" in measured:
            out["length_ratio"] = _ratio(measured["response_length"], self.baselines.get("response_length"))
        if "kl" in measured:
            out["kl"] = measured["kl"]
        if "entropy" in measured:
            out["entropy_ratio"] = _ratio(measured["entropy"], self.baselines.get("entropy"))
        if "probe_approval" in measured:
            gap = measured["probe_approval"] - measured["probe_gold_accuracy"]
            out["gold_gap"] = gap - self.baselines["probe_gap"]
        return out

    def observe(self, step: int, measured: dict[str, float]) -> tuple[dict[str, float], Trip | None]:
        """Take one step's measurements; returns the derived signals and the trip, if this step trips one.

        After a trip the monitor stays tripped: later observations return the same trip."""
        signals = self.signals(measured)
        if self.trip is not None:
            return signals, self.trip
        for monitor, (signal, direction, field) in _MONITORS.items():
            threshold = getattr(self.thresholds, field)
            if threshold is None or signal not in signals:
                continue
            value = signals[signal]
            bad = not _finite(value) or (value > threshold if direction == "max" else value < threshold)
            if not bad:
                self.streaks.pop(monitor, None)
                self.first_bad.pop(monitor, None)
                continue
            self.streaks[monitor] = self.streaks.get(monitor, 0) + 1
            self.first_bad.setdefault(monitor, step)
            if self.streaks[monitor] >= self.thresholds.patience and self.trip is None:
                self.trip = Trip(monitor, value, threshold, step, self.first_bad[monitor])
        return signals, self.trip

    # accelerate checkpoints this with the stage, so a resumed run keeps its baselines and streaks
    def state_dict(self) -> dict:
        trip = None if self.trip is None else vars(self.trip)
        return {"baselines": dict(self.baselines), "streaks": dict(self.streaks), "first_bad": dict(self.first_bad),
                "trip": trip}

    def load_state_dict(self, state: dict) -> None:
        self.baselines = dict(state["baselines"])
        self.streaks = dict(state["streaks"])
        self.first_bad = dict(state["first_bad"])
        self.trip = Trip(**state["trip"]) if state.get("trip") else None


def _ratio(value: float, baseline: float | None) -> float:
    if baseline is None or baseline == 0:
        return 1.0
    return value / baseline


def _finite(value: float) -> bool:
    return math.isfinite(value)
