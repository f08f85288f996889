"""Dispatching a stage to a work pool: the request a worker gets, the result it hands back through MLflow, and the
errors a misconfigured dispatch gives. The full round trip through a real worker is in test_services.py."""

from __future__ import annotations

import shutil

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from flows.stage_flow import launch
from tasks.base_model import run_base_model
from tasks.core.errors import ConfigError
from tasks.core.lineage import Lineage
from tasks.data.validated import validated_file
from tasks.orchestration.dispatch import (
    StageDispatchError,
    StageRequest,
    check_dispatchable,
    dispatch_stage,
    fetch_result,
    publish_result,
)
from tasks.orchestration.stage_tasks import TASKS, placed
from tasks.registry.champion import unchanged_since_champion
from tasks.run.contract import StageResult
from tasks.run.tracking import configure_tracking
from tasks.validate import run_validate, validate_key
from tests.helpers.configs import reduced_config

LINEAGE = Lineage(git_sha="test", config_hash="test", data_md5="untracked", data_tags=(("alignflow.x", "y"),))


@pytest.fixture
def upstream(tmp_path, demo_data_dir, tracked):
    data_dir = shutil.copytree(demo_data_dir, tmp_path / "data")  # the tests below change files in it
    cfg = reduced_config(tmp_path, data_dir)
    configure_tracking(cfg)
    data = run_validate(cfg, LINEAGE)
    return cfg, run_base_model(cfg, LINEAGE, data=data), data


def test_a_stage_request_survives_json_and_runs_the_same_stage(upstream):
    cfg, base, data = upstream
    request = StageRequest.build("validate", cfg, LINEAGE, {})
    received = StageRequest.model_validate_json(request.model_dump_json())
    assert received.config["tracking"]["tracking_uri"] == mlflow.get_tracking_uri()
    result = received.run()
    assert result.stage == "validate" and result.cache_key == validate_key(cfg) == data.cache_key
    assert mlflow.get_run(result.run_id).data.tags["alignflow.x"] == "y"  # lineage, data tags included
    # Keyword inputs that are not results (evaluate's label) travel as options.
    evaluate = StageRequest.build("evaluate", cfg, LINEAGE, {"policy": base, "data": data, "label": "sft"})
    assert set(evaluate.inputs) == {"policy", "data"} and evaluate.options == {"label": "sft"}


def test_a_requested_stage_runs_under_accelerate_launch(upstream, tmp_path):
    """The path a multi-GPU stage takes on its worker, here with one CPU process."""
    cfg, _, data = upstream
    launch_config = tmp_path / "cpu.yaml"
    launch_config.write_text(yaml.safe_dump({
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "NO", "num_machines": 1, "machine_rank": 0,
        "num_processes": 1, "mixed_precision": "no", "use_cpu": True, "main_training_function": "main"}))
    result = launch(StageRequest.build("validate", cfg, LINEAGE, {}), str(launch_config))
    assert result.stage == "validate" and result.cache_key == data.cache_key
    assert result.run_id != data.run_id and mlflow.get_run(result.run_id).info.status == "FINISHED"
    with pytest.raises(ConfigError, match=r"dispatch.accelerate.validate: .*missing.yaml does not exist"):
        launch(StageRequest.build("validate", cfg, LINEAGE, {}), str(tmp_path / "missing.yaml"))


def test_validated_files_come_from_mlflow_when_the_local_copy_is_missing_or_changed(upstream, tmp_path):
    _, _, data = upstream
    local = validated_file(data, "sft_train", tmp_path / "dl0")
    assert str(local) == data.outputs["sft_train"]
    original = local.read_bytes()
    local.write_bytes(original + b'{"prompt": "x", "completion": "y"}\n')  # tampered: not what was validated
    fetched = validated_file(data, "sft_train", tmp_path / "dl1")
    assert fetched != local and fetched.read_bytes() == original
    local.unlink()  # another machine: no local copy at all
    assert validated_file(data, "sft_train", tmp_path / "dl2").read_bytes() == original


def test_dispatch_needs_a_tracking_server_and_dispatchable_stages(tmp_path, demo_data_dir, tracked):
    cfg = reduced_config(tmp_path, demo_data_dir, "dispatch.pools.sft=gpu")
    configure_tracking(cfg)
    with pytest.raises(ConfigError, match=r"dispatch.pools sends sft to work pools.*tracking URI is sqlite:///"):
        check_dispatchable(cfg)
    with pytest.raises(ConfigError, match=r"dispatch.pools.validate"):
        reduced_config(tmp_path, demo_data_dir, "dispatch.pools.validate=gpu")


def test_a_dispatched_stage_keeps_its_name_and_cache_key(tmp_path, demo_data_dir):
    cfg = reduced_config(tmp_path, demo_data_dir, "dispatch.pools.sft=gpu")
    sft_task, evaluate_task = TASKS["sft"], TASKS["evaluate"]
    assert placed(sft_task, cfg) is not sft_task and placed(sft_task, cfg).name == "sft"
    assert placed(evaluate_task, cfg) is evaluate_task  # not listed: runs in the pipeline's process
    base = StageResult(stage="base_model", run_id="r1", cache_key="b" * 64, output_hashes={"model": "b" * 64})
    data = StageResult(stage="validate", run_id="r2", cache_key="d" * 64, output_hashes={"sft_train": "e" * 32})
    parameters = {"cfg": cfg, "lineage": LINEAGE, "base": base, "data": data}
    keys = {task.cache_policy.cache_key_fn(None, parameters) for task in (sft_task, placed(sft_task, cfg))}
    assert len(keys) == 1


def test_results_travel_through_mlflow_and_a_missing_one_is_an_error(upstream):
    cfg, base, _ = upstream
    publish_result(base, "flow-run-1", "alignflow-stage/gpu")
    assert fetch_result(cfg, "flow-run-1", "stage base_model") == base
    assert MlflowClient().get_run(base.run_id).data.tags["alignflow.dispatch.deployment"] == "alignflow-stage/gpu"
    with pytest.raises(StageDispatchError, match="0 MLflow runs .* carry alignflow.dispatch.flow_run_id=flow-run-2"):
        fetch_result(cfg, "flow-run-2", "stage sft")


def test_dispatch_to_a_pool_without_a_deployment_says_how_to_create_it(upstream, prefect_harness):
    cfg, base, data = upstream
    cfg = cfg.model_copy(update={"dispatch": cfg.dispatch.model_copy(update={"pools": {"sft": "no-such-pool"}})})
    with pytest.raises(StageDispatchError, match=r"no deployment 'alignflow-stage/no-such-pool'.*prefect deploy"):
        dispatch_stage("sft", cfg, LINEAGE, {"base": base, "data": data})


def test_nothing_changed_only_for_the_champions_own_data_version_and_config(tracked, tmp_path, template_store):
    shutil.copy(template_store[0], tmp_path / "mlflow.db")
    cfg = reduced_config(tmp_path, tmp_path)
    configure_tracking(cfg)
    assert unchanged_since_champion(cfg, "a" * 32, "c" * 64) is None  # no champion yet
    tags = {"alignflow.dvc_data_md5": "a" * 32, "alignflow.config_hash": "c" * 64}
    version = mlflow.register_model(template_store[1], cfg.registry.policy_name, tags=tags).version
    MlflowClient().set_registered_model_alias(cfg.registry.policy_name, "champion", version)

    said = unchanged_since_champion(cfg, "a" * 32, "c" * 64)
    assert said.startswith(f"nothing changed: champion alignflow-policy v{version} was trained on DVC data {'a' * 32}")
    assert unchanged_since_champion(cfg, "b" * 32, "c" * 64) is None  # new data version
    assert unchanged_since_champion(cfg, "a" * 32, "d" * 64) is None  # new config
    assert unchanged_since_champion(cfg, "a" * 32 + "+modified", "c" * 64) is None  # DVC cannot vouch for it
