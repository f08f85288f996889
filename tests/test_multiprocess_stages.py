"""One process logs: under `accelerate launch` with two processes (CPU, gloo) each training stage trains in both,
and the main one alone opens the stage's MLflow run, logs its model and metrics, and reports its result.

On a machine without GPUs `accelerate launch --cpu` starts one process whatever `--num_processes` says (several
need mpirun); `--multi_gpu` starts them with torchrun, and ACCELERATE_USE_CPU makes them one gloo group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from tasks.base_model import run_base_model
from tasks.core import paths
from tasks.core.lineage import Lineage
from tasks.core.stage_names import TRAINING
from tasks.core.tags import STAGE_TAG
from tasks.cost import run_cost
from tasks.reward import run_reward
from tasks.run.contract import StageResult
from tasks.run.tracking import configure_tracking
from tasks.sft import run_sft
from tasks.validate import run_validate
from tests.helpers.configs import reduced_config

pytestmark = [pytest.mark.slow, pytest.mark.heavy(3)]

LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked")
# As small as the stages allow: one or two optimizer steps, one PPO iteration on four short rollouts.
SMALL = ("sft.max_steps=2", "reward.max_steps=1", "cost.max_steps=1", "dpo.max_steps=1", "ppo.steps=1",
         "ppo.rollout_batch_size=4", "ppo.mini_batch_size=2", "ppo.ppo_epochs=1", "ppo.max_new_tokens=8",
         "rloo.max_steps=1", "rloo.batch_size=4", "rloo.num_generations=2", "rloo.max_new_tokens=8",
         "rloo.monitors.probe_size=4")
# What the second process leaves in a checkpoint it wrote its part of: proof that it trained in the same group.
RANK_1_STATE = {"sft": "rng_state_1.pth", "reward": "rng_state_1.pth", "cost": "rng_state_1.pth",
                "dpo": "rng_state_1.pth", "ppo": "random_states_1.pkl", "safe_ppo": "random_states_1.pkl",
                "rloo": "rng_state_1.pth"}
LAUNCH_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, demo_data_dir):
    """The stage results a pipeline would hand on (validate, base model, SFT, reward, cost), built in this process."""
    root = tmp_path_factory.mktemp("multiprocess")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paths, "DEFAULT_ARTIFACT_ROOT", root / "mlartifacts")
        cfg = reduced_config(root, demo_data_dir, *SMALL)
        configure_tracking(cfg)
        data = run_validate(cfg, LINEAGE)
        base = run_base_model(cfg, LINEAGE, data=data)
        sft = run_sft(cfg, LINEAGE, base=base, data=data)
        reward = run_reward(cfg, LINEAGE, sft=sft, data=data)
        cost = run_cost(cfg, LINEAGE, sft=sft, data=data)
    inputs = root / "pipeline.json"
    inputs.write_text(json.dumps({name: result.model_dump() for name, result in
                                  {"data": data, "base": base, "sft": sft, "reward": reward, "cost": cost}.items()}))
    # The launched stages work in their own folder: the same cache keys would resume the checkpoints above.
    overrides = [f"data.dir={demo_data_dir}", f"work_dir={root / 'launched'}",
                 f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}", *SMALL]
    return root, inputs, overrides, cfg.registry.reward_name


def _launch(stage: str, inputs, out, overrides: list[str]) -> tuple[int, str]:
    with socket.socket() as probe:  # a free rendezvous port: another launch may hold accelerate's default
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port),
               "-m", "flows.stage_entry", stage, "--config", str(paths.DEMO_CONFIG), "--inputs", str(inputs),
               "--out", str(out)]
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(paths.PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, cwd=paths.PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and both of its processes
        output, _ = process.communicate()
        pytest.fail(f"{stage} under two processes did not finish in {LAUNCH_TIMEOUT_S}s (a deadlock?):\n"
                    f"{output[-6000:]}")
    return process.returncode, output


def _all_runs() -> list:
    return mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1000)


@pytest.mark.parametrize("stage", TRAINING)
def test_a_stage_under_two_processes_logs_one_run_and_one_model_from_the_main_process(upstream, stage):
    root, inputs, overrides, reward_name = upstream
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = MlflowClient()
    runs_before = {run.info.run_id for run in _all_runs()}
    versions_before = len(client.search_model_versions(f"name = '{reward_name}'"))
    out = root / f"{stage}.json"

    returncode, output = _launch(stage, inputs, out, overrides)
    assert returncode == 0, output[-6000:]

    new_runs = [run for run in _all_runs() if run.info.run_id not in runs_before]
    assert [run.data.tags.get(STAGE_TAG) for run in new_runs] == [stage], "the second process opened a run"
    run = new_runs[0]
    result = StageResult.model_validate_json(out.read_text())
    assert result.stage == stage and result.run_id == run.info.run_id
    assert run.info.status == "FINISHED"
    assert result.metrics and all(run.data.metrics[name] == value for name, value in result.metrics.items())

    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{run.info.run_id}'")
    assert [f"models:/{model.model_id}" for model in models] == [result.model_uri]
    if stage == "reward":  # one version registered, from that model
        assert len(client.search_model_versions(f"name = '{reward_name}'")) == versions_before + 1
        version = client.get_model_version(reward_name, result.outputs["registered_version"])
        assert version.run_id == run.info.run_id

    # Both processes trained together: the second wrote its part of the last checkpoint.
    assert list((root / "launched" / stage).glob(f"*/checkpoints/checkpoint-*/{RANK_1_STATE[stage]}")), output[-3000:]
    if stage == "ppo":  # each rank sampled its own rollouts: their torch generators were seeded apart
        files = [next((root / "launched" / stage).glob(f"*/checkpoints/checkpoint-*/random_states_{rank}.pkl"))
                 for rank in (0, 1)]
        assert not torch.equal(*(torch.load(f, weights_only=False)["torch_manual_seed"] for f in files))
