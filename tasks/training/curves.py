"""The RL stages' training curves (reward and KL per step, with the monitors' trip marked) as a PNG artifact."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no screen on a worker

import matplotlib.pyplot as plt
import mlflow


def log_reward_and_kl(steps: list[int], reward: list[float], kl: list[float], *, title: str,
                      trip_step: int | None = None, artifact_file: str = "curves/reward_kl.png") -> None:
    """Reward (left axis) and KL to the reference (right axis) over the steps, logged to the active run."""
    figure, left = plt.subplots(figsize=(7, 4))
    left.plot(steps, reward, color="tab:blue", label="reward (mean of batch)")
    left.set_xlabel("step")
    left.set_ylabel("reward", color="tab:blue")
    right = left.twinx()
    right.plot(steps, kl, color="tab:red", label="KL to reference (nats per answer)")
    right.set_ylabel("KL (nats per answer)", color="tab:red")
    if trip_step is not None:
        left.axvline(trip_step + 1, color="black", linestyle="--", label="monitor tripped")
    handles = [line for axis in (left, right) for line in axis.get_lines()]
    left.legend(handles, [line.get_label() for line in handles], loc="upper left", fontsize=8)
    left.set_title(title)
    figure.tight_layout()
    try:
        mlflow.log_figure(figure, artifact_file)
    finally:
        plt.close(figure)
