"""RLOO on TRL's RLOOTrainer with our reward model: the stage contract (metrics, monitors, curves, adapters),
a clear error for bad settings, and resume after kill -9."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
import pytest
from safetensors.torch import load_file

from tasks.core.config import load_config
from tasks.core.errors import ConfigError
from tasks.core.paths import DEMO_CONFIG
from tasks.registry.logged_models import resolve_model_source
from tasks.rloo import rloo_key, run_rloo
from tests.helpers.rl import LINEAGE, rl_stages, stage_child_command

SHORT = ("rloo.max_steps=4", "rloo.batch_size=8", "rloo.num_generations=4", "rloo.max_new_tokens=8",
         "rloo.save_steps=2", "rloo.monitors.probe_size=8", "rloo.monitors.probe_steps=2")


@pytest.fixture
def stages(tmp_path, demo_data_dir, tracked):
    def build(*overrides):
        return rl_stages(tmp_path, demo_data_dir, *SHORT, *overrides)
    return build


def test_rloo_stage_logs_its_steps_monitors_and_curves(stages):
    cfg, data, sft, reward = stages()
    result = run_rloo(cfg, LINEAGE, sft=sft, data=data, reward=reward)
    client = mlflow.MlflowClient()
    for name in ("rloo/reward", "rloo/kl", "rloo/entropy", "monitor/length_ratio", "monitor/entropy_ratio",
                 "monitor/abs_reward_length_corr"):
        assert len(client.get_metric_history(result.run_id, name)) == 4, name
    assert len(client.get_metric_history(result.run_id, "monitor/probe_gold_accuracy")) == 2  # steps 0 and 2
    # The KL budget's KL is the probe's, at temperature 1, on the same steps: zero before the first update, when
    # the policy is its reference.
    kl = [m.value for m in sorted(client.get_metric_history(result.run_id, "monitor/kl"), key=lambda m: m.step)]
    assert len(kl) == 2 and abs(kl[0]) < 1e-4
    assert result.metrics["rloo/global_step"] == 4 and result.metrics["monitor/tripped"] == 0.0
    assert {a.path for a in client.list_artifacts(result.run_id, "curves")} == {"curves/reward_kl.png"}
    assert result.model_uri.startswith("models:/")


def test_rloo_hands_trl_its_weighted_reward_functions_and_each_is_logged(stages):
    functions = "[{name: model, weight: 1.0}, {name: helps_benign, weight: 0.5}]"
    cfg, data, sft, reward = stages("rloo.max_steps=2", f"rloo.reward_functions={functions}")
    result = run_rloo(cfg, LINEAGE, sft=sft, data=data, reward=reward)
    client = mlflow.MlflowClient()
    for name in ("reward_model", "helps_benign"):  # TRL logs each function's mean; the sum is the reward
        assert len(client.get_metric_history(result.run_id, f"rloo/rewards/{name}/mean")) == 2, name
    helps = client.get_metric_history(result.run_id, "rloo/rewards/helps_benign/mean")
    assert all(-1.0 <= m.value <= 1.0 for m in helps)


def test_rloo_with_lora_stores_adapters(stages, tmp_path):
    cfg, data, sft, reward = stages("rloo.lora.enabled=true", "rloo.max_steps=2")
    result = run_rloo(cfg, LINEAGE, sft=sft, data=data, reward=reward)
    folder = Path(resolve_model_source(result.model_uri, tmp_path / "rloo"))
    assert (folder / "adapter_model.safetensors").is_file() and not (folder / "model.safetensors").exists()


def test_a_batch_of_partial_groups_is_a_config_error():
    with pytest.raises(ConfigError, match=r"rloo.*batch_size \(6\) must be a multiple of num_generations \(4\)"):
        load_config(DEMO_CONFIG, ["rloo.batch_size=6", "rloo.num_generations=4"])


def test_a_kl_budget_with_no_reference_to_measure_against_is_a_config_error():
    # beta 0 keeps no reference model in TRL, and full fine-tuning has no adapters to switch off.
    with pytest.raises(ConfigError, match=r"rloo.*kl_budget needs a reference"):
        load_config(DEMO_CONFIG, ["rloo.beta=0", "rloo.lora.enabled=false", "rloo.monitors.kl_budget=20"])
    load_config(DEMO_CONFIG, ["rloo.beta=0", "rloo.lora.enabled=true", "rloo.monitors.kl_budget=20"])  # the base
    load_config(DEMO_CONFIG, ["rloo.beta=0", "rloo.lora.enabled=false", "rloo.monitors.kl_budget=null"])


def test_rloo_resumes_after_kill_and_ends_like_an_uninterrupted_run(stages, tmp_path):
    cfg, data, sft, reward = stages("rloo.max_steps=6")
    command = stage_child_command("rloo", tmp_path, cfg, sft, data, reward)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "ALIGNFLOW_FAILPOINT": "rloo.step@3"}
    child = subprocess.run(command, env=env, capture_output=True,
                           cwd=Path(__file__).parent.parent, timeout=600, check=False)
    assert child.returncode == -9, child.stderr.decode()[-3000:]  # killed after step 3, checkpoint-2 written
    checkpoints = cfg.work_dir / "rloo" / rloo_key(cfg, sft, data, reward)[:16] / "checkpoints"
    assert (checkpoints / "checkpoint-2").is_dir() and not (checkpoints / "checkpoint-4").exists()

    resumed = run_rloo(cfg, LINEAGE, sft=sft, data=data, reward=reward)
    assert mlflow.get_run(resumed.run_id).data.tags["alignflow.resumed_from_step"] == "2"
    fresh = run_rloo(cfg.model_copy(update={"work_dir": tmp_path / "fresh"}), LINEAGE, sft=sft, data=data,
                     reward=reward)
    a = load_file(Path(resolve_model_source(resumed.model_uri, tmp_path / "a")) / "model.safetensors")
    b = load_file(Path(resolve_model_source(fresh.model_uri, tmp_path / "b")) / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert resumed.metrics["rloo/final_reward"] == pytest.approx(fresh.metrics["rloo/final_reward"], abs=1e-4)
