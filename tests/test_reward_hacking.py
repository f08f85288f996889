"""The reward-hacking monitors act during real PPO runs on the demo world.

The demo as it was (SFT demos that never refuse, a reward model trained on whole answers only) reward-hacks:
PPO finds an answer the reward model overrates. The monitors must trip within the run, stop it, keep the last
healthy state and make the gates refuse the candidate. The demo as it is now (the SFT demo budget, hard
negatives for the reward model) must train through without a trip.
"""

from __future__ import annotations

import mlflow
import pytest

from tasks.core.config import load_config
from tasks.core.paths import DEMO_CONFIG
from tasks.core.tags import MONITOR_TRIPPED_TAG
from tasks.data.demo import write_demo_data
from tasks.evaluate import run_evaluate
from tasks.ppo import run_ppo
from tasks.registry.evaluations import gate_evaluation
from tasks.registry.gates import decide
from tasks.run.tracking import configure_tracking
from tests.helpers.rl import LINEAGE, train_sft_and_reward

pytestmark = pytest.mark.heavy(2)  # about 2 minutes (conftest.py)

# What configs/pipelines/demo.yaml said before the monitors: a reward model trained on whole, on-topic answers only, and
# PPO sampling at temperature 1 with a KL target of 6 nats for 40 steps.
HACKING = ("reward.hard_negatives=false", "ppo.temperature=1.0", "ppo.kl_target=6.0", "ppo.steps=40")


def demo_world(tmp_path, name: str, sft_refusal_share: float, *overrides: str):
    data_dir = tmp_path / name / "data"
    write_demo_data(data_dir, sft_refusal_share=sft_refusal_share)
    cfg = load_config(DEMO_CONFIG, [f"data.dir={data_dir}", f"work_dir={tmp_path / name / 'work'}",
                                    f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *overrides])
    configure_tracking(cfg)
    return cfg


@pytest.mark.usefixtures("tracked")
def test_the_old_demo_settings_trip_a_monitor_and_the_gates_refuse_the_candidate(tmp_path):
    cfg = demo_world(tmp_path, "hacking", 0.0, *HACKING)
    data, sft, reward = train_sft_and_reward(cfg)
    ppo = run_ppo(cfg, LINEAGE, sft=sft, data=data, reward=reward)

    assert ppo.metrics["monitor/tripped"] == 1.0
    assert ppo.metrics["ppo/steps"] < cfg.ppo.steps  # stopped early
    assert ppo.metrics["monitor/kept_step"] < ppo.metrics["monitor/first_bad_step"] <= ppo.metrics["monitor/trip_step"]
    reason = mlflow.get_run(ppo.run_id).data.tags[MONITOR_TRIPPED_TAG]
    assert "beyond its threshold" in reason
    evaluation = run_evaluate(cfg, LINEAGE, policy=ppo, data=data, label="ppo", reward=reward, reference=sft)
    assert evaluation.metrics["train/monitor_tripped"] == 1.0
    decision = decide(gate_evaluation(evaluation, tmp_path / "gated"), gates=cfg.gates, baseline=None, champion=None)
    assert any(g.name.startswith("monitors:") and not g.passed for g in decision.gates)


@pytest.mark.usefixtures("tracked")
def test_the_fixed_demo_settings_train_through_without_a_trip(tmp_path):
    cfg = demo_world(tmp_path, "fixed", 0.1)
    data, sft, reward = train_sft_and_reward(cfg)
    ppo = run_ppo(cfg, LINEAGE, sft=sft, data=data, reward=reward)
    assert ppo.metrics["monitor/tripped"] == 0.0
    assert ppo.metrics["ppo/steps"] == cfg.ppo.steps
    assert MONITOR_TRIPPED_TAG not in mlflow.get_run(ppo.run_id).data.tags
