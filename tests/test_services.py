"""The production path on loopback: PostgreSQL, `mlflow server` with basic auth, `prefect server` with an auth
string, a process worker, `prefect deploy` of infra/prefect.yaml, dispatched stages, scheduled retraining,
secret redaction and two concurrent pipelines.

The tests share one set of services and run in file order: the dispatched run makes the first champion, the
scheduled runs find nothing changed and then a new data version, and the concurrent runs gate against it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from mlflow import MlflowClient

from tasks.data.demo import write_demo_data
from tests.helpers.services import BIN, PIPELINE_USER, REPO, copy_of_working_tree, loopback_services

pytestmark = [pytest.mark.slow, pytest.mark.heavy(9)]

POOL = "gpu"  # the pool name infra/prefect.yaml gives stage deployments; here its worker is a process worker
DISPATCHED = ("sft", "reward", "dpo")
# Planted secrets: the pipeline user's MLflow password, which pipeline processes get only inside the tracking URI
# of their config (workers get it from their environment), and a Hugging Face token in the environment.
HF_TOKEN = f"hf_{secrets.token_hex(16)}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("services")
    with loopback_services(root) as (services, startup):
        for pool in ("cpu", POOL):
            services.create_work_pool(pool)
        with ThreadPoolExecutor(1) as background:  # the worker polls its pool, deployed or not: start it meanwhile
            worker = background.submit(services.start_worker, POOL, copy_of_working_tree(root / "worker-home"))
            deployed = services.prefect_cli("deploy", "--all", "--prefect-file", "infra/prefect.yaml")
            startup["worker"] = worker.result()
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        print(f"service start times (s): {startup}")
        home = _pipeline_home(root / "pipeline", services)
        yield services, home
        for service in services.services:
            print(f"--- {service.name} log tail ---\n{service.output()[-3000:]}")


def _pipeline_home(home: Path, services) -> Path:
    """A project folder of its own: DVC-tracked demo data and a small config over configs/pipelines/demo.yaml."""
    home.mkdir()
    write_demo_data(home / "data")
    _dvc(home, "init", "--no-scm", "-q")
    _dvc(home, "add", "-q", "data")
    config = {
        "extends": str(REPO / "configs" / "pipelines" / "demo.yaml"),
        "name": "loopback",
        "optimizers": ["dpo"],
        "data": {"dir": str(home / "data")},
        "sft": {"epochs": 2},
        "reward": {"epochs": 1, "always": True},  # DPO does not need it: trained, it is one more dispatched stage
        "dpo": {"epochs": 1},
        "eval": {"max_new_tokens": 12},
        # Only the champion gates: the first candidate is promoted, later ones must not fall behind it.
        "gates": {"thresholds": [], "beat_baseline": []},
        "dispatch": {"poll_interval_s": 1},
        "tracking": {"tracking_uri": f"http://{PIPELINE_USER}:{services.pipeline_password}@127.0.0.1:{services.mlflow_port}"},
    }
    (home / "loopback.yaml").write_text(yaml.safe_dump(config))
    return home


def _dvc(home: Path, *args: str) -> None:
    subprocess.run([str(BIN / "dvc"), *args], cwd=home, check=True, capture_output=True)


def _alignflow(services, home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = services.client_env(HF_TOKEN=HF_TOKEN, **(env or {}))
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # the config's URI carries them
        env.pop(name)
    return subprocess.Popen([str(BIN / "alignflow"), *args], cwd=home, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout: float = 900) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-6000:]
    return output


@pytest.fixture
def mlflow_client(stack):
    services, _ = stack
    os.environ.update(MLFLOW_TRACKING_USERNAME=PIPELINE_USER, MLFLOW_TRACKING_PASSWORD=services.pipeline_password)
    yield MlflowClient(tracking_uri=services.mlflow_url, registry_uri=services.mlflow_url)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ.pop(name, None)


def _runs(client: MlflowClient, filter_string: str = "") -> list:
    experiment = client.get_experiment_by_name("alignflow")
    return client.search_runs([experiment.experiment_id], filter_string=filter_string, max_results=500)


def test_services_refuse_unauthenticated_requests(stack):
    services, _ = stack
    search = f"{services.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(search, timeout=30).status_code == 401
    assert requests.get(search, auth=(PIPELINE_USER, "wrong"), timeout=30).status_code == 401
    assert requests.get(search, auth=(PIPELINE_USER, services.pipeline_password), timeout=30).status_code == 200

    assert requests.post(f"{services.prefect_api}/flows/filter", json={}, timeout=30).status_code == 401
    assert services.prefect("POST", "/flows/filter", json={}).status_code == 200


def test_dispatched_pipeline_runs_stages_on_the_worker_and_registers_on_the_server(stack, mlflow_client):
    services, home = stack
    planted = services.pipeline_password
    dispatch = [arg for stage in DISPATCHED for arg in ("--set", f"dispatch.pools.{stage}={POOL}")]
    started = time.perf_counter()
    output = _finish(_alignflow(services, home, "run", "--config", "loopback.yaml", *dispatch))
    print(f"dispatched pipeline: {time.perf_counter() - started:.1f} s")

    # Each dispatched stage ran as a flow run of deployment alignflow-stage/gpu, on the gpu pool's worker.
    stage_runs = {run.data.tags["alignflow.stage"]: run
                  for run in _runs(mlflow_client, "tags.`alignflow.dispatch.deployment` = 'alignflow-stage/gpu'")}
    assert set(stage_runs) == set(DISPATCHED), output[-3000:]
    for stage, run in stage_runs.items():
        flow_run = services.prefect("GET", f"/flow_runs/{run.data.tags['alignflow.dispatch.flow_run_id']}").json()
        assert flow_run["state_type"] == "COMPLETED" and flow_run["work_pool_name"] == POOL, (stage, flow_run)
        # The worker got no credentials from the pipeline: the request's tracking URI carries none.
        assert planted not in str(flow_run["parameters"])
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri  # proxied, no shared disk

    versions = mlflow_client.search_model_versions("name='alignflow-policy'")
    assert {v.tags["alignflow.source_run_id"] for v in versions} == {stage_runs[s].info.run_id for s in ("sft", "dpo")}
    champion = mlflow_client.get_model_version_by_alias("alignflow-policy", "champion")
    assert champion.tags["alignflow.source_run_id"] == stage_runs["dpo"].info.run_id
    assert champion.tags["alignflow.gate_decision"] == "pass"
    assert champion.tags["alignflow.dispatch.deployment"] == "alignflow-stage/gpu"  # trained on the worker

    # The planted secrets appear nowhere in MLflow params, tags or the logged config, nor in any log.
    runs = _runs(mlflow_client)
    for run in runs:
        recorded = f"{run.data.params} {run.data.tags}"
        assert planted not in recorded and HF_TOKEN not in recorded, run.info.run_name
    parent = next(run for run in runs if run.info.run_name == "loopback-pipeline")
    assert parent.data.params["tracking.tracking_uri"] == f"http://{PIPELINE_USER}:***@127.0.0.1:{services.mlflow_port}"
    config = mlflow_client.download_artifacts(parent.info.run_id, "config.yaml", str(home / "downloaded"))
    assert planted not in Path(config).read_text()
    flow_run_ids = [parent.data.tags["alignflow.prefect_flow_run_id"]]
    flow_run_ids += [run.data.tags["alignflow.dispatch.flow_run_id"] for run in stage_runs.values()]
    logs = [message for flow_run_id in flow_run_ids for message in services.flow_run_logs(flow_run_id)]
    assert any("tracking URI http://127.0.0.1" in message for message in logs)
    for text in [*logs, output, *(service.output() for service in services.services)]:
        assert planted not in text and HF_TOKEN not in text


def test_scheduled_retraining_skips_unchanged_data_and_trains_on_a_new_version(stack, mlflow_client):
    services, home = stack
    server = _alignflow(services, home, "schedule", "--cron", "0 3 * * *", "--config", "loopback.yaml")
    try:
        deployment = _wait_for_deployment(services, "alignment_pipeline/scheduled-retraining", server)
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * *"]

        # Same DVC data version and config as the champion: the scheduled run ends early.
        unchanged = _run_deployment(services, deployment["id"])
        assert unchanged["state_type"] == "COMPLETED"
        assert any(m.startswith("nothing changed: champion alignflow-policy")
                   for m in services.flow_run_logs(unchanged["id"]))

        # A new DVC data version: the scheduled run trains, evaluates and gates.
        write_demo_data(home / "data", seed=1)
        _dvc(home, "add", "-q", "data")
        new_md5 = yaml.safe_load((home / "data.dvc").read_text())["outs"][0]["md5"]
        retrained = _run_deployment(services, deployment["id"])
        assert retrained["state_type"] == "COMPLETED"
        assert not any("nothing changed" in m for m in services.flow_run_logs(retrained["id"]))
    finally:
        server.terminate()
        server.communicate(timeout=60)
    runs = _runs(mlflow_client, f"tags.`alignflow.prefect_flow_run_id` = '{retrained['id']}'")
    stages = {run.data.tags.get("alignflow.stage") for run in runs}
    assert {"sft", "dpo", "evaluate-dpo", "evaluate-champion", "promote"} <= stages, stages
    assert {run.data.tags["alignflow.dvc_data_md5"] for run in runs} == {new_md5}
    new_versions = [v for v in mlflow_client.search_model_versions("name='alignflow-policy'")
                    if v.tags.get("alignflow.dvc_data_md5") == new_md5]
    assert any(v.tags.get("alignflow.gate_decision") in ("pass", "fail") for v in new_versions), new_versions


def _wait_for_deployment(services, name: str, server: subprocess.Popen, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[0][-4000:]
        found = services.prefect("GET", f"/deployments/name/{name}")
        if found.ok:
            return found.json()
        time.sleep(1)
    raise TimeoutError(f"deployment {name} not created within {timeout} s")


def _run_deployment(services, deployment_id: str) -> dict:
    created = services.prefect("POST", f"/deployments/{deployment_id}/create_flow_run", json={})
    created.raise_for_status()
    return services.wait_for_flow_run(created.json()["id"])


def test_two_concurrent_pipelines_both_register_and_gates_pick_the_champion(stack, mlflow_client):
    services, home = stack
    before = {v.version for v in mlflow_client.search_model_versions("name='alignflow-policy'")}
    runs = [_alignflow(services, home, "run", "--config", "loopback.yaml", "--set", f"dpo.beta={beta}",
                       "--set", f"name=concurrent-{beta}") for beta in (0.2, 0.3)]
    for process in runs:
        _finish(process)

    parents = [_runs(mlflow_client, f"attributes.run_name = 'concurrent-{beta}-pipeline'")[0] for beta in (0.2, 0.3)]
    assert all(parent.info.status == "FINISHED" for parent in parents)
    children = [_runs(mlflow_client, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'") for parent in parents]
    dpo_runs = [next(r for r in runs_of if r.data.tags.get("alignflow.stage") == "dpo") for runs_of in children]
    # Separate runs, separate artifact folders: neither model overwrote the other.
    assert dpo_runs[0].info.run_id != dpo_runs[1].info.run_id
    assert dpo_runs[0].info.artifact_uri != dpo_runs[1].info.artifact_uri
    new_versions = [v for v in mlflow_client.search_model_versions("name='alignflow-policy'")
                    if v.version not in before]
    assert {run.info.run_id for run in dpo_runs} <= {v.tags["alignflow.source_run_id"] for v in new_versions}
    champion = mlflow_client.get_model_version_by_alias("alignflow-policy", "champion")
    assert champion.tags["alignflow.gate_decision"] == "pass"
    # The promotion lock: one gate decision at a time, so each saw the champion the other left.
    promotes = sorted((next(r for r in runs_of if r.data.tags.get("alignflow.stage") == "promote")
                       for runs_of in children), key=lambda r: r.info.start_time)
    assert promotes[0].info.end_time <= promotes[1].info.start_time, [(p.info.start_time, p.info.end_time)
                                                                      for p in promotes]


def test_a_stopped_mlflow_server_fails_the_run_clearly_and_the_rerun_loses_nothing(stack, mlflow_client):
    services, home = stack
    args = ("run", "--config", "loopback.yaml", "--set", "dpo.beta=0.4", "--set", "name=outage")
    before = {v.version for v in mlflow_client.search_model_versions("name='alignflow-policy'")}
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}  # fail in seconds
    process = _alignflow(services, home, *args, env=env)
    deadline = time.monotonic() + 600
    while not _runs(mlflow_client, "attributes.run_name = 'dpo' and attributes.status = 'RUNNING'"):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
        time.sleep(1)
    services.stop_mlflow()  # mid-stage
    output, _ = process.communicate(timeout=600)
    services.start_mlflow(create_user=False)

    # The client retried, then the command failed with one message naming the server, and no traceback.
    assert process.returncode == 1, output[-3000:]
    assert f"error: the service at 127.0.0.1:{services.mlflow_port} did not answer" in output, output[-3000:]
    assert "Traceback" not in output
    # The rerun finishes. The runs the outage left RUNNING (their process could not end them) are reaped, and
    # nothing is half written: one new version for the new DPO model, no duplicate.
    _finish(_alignflow(services, home, *args))
    assert _runs(mlflow_client, "attributes.status = 'RUNNING'") == []
    reaped = _runs(mlflow_client, "attributes.status = 'KILLED'")
    # The stop lands in DPO or, on a loaded machine, in a stage after it: whichever it was, it was reaped.
    assert any(run.info.run_name in ("dpo", "evaluate-dpo", "register")
               and run.data.tags["alignflow.ended_by"].startswith("reaped:") for run in reaped), \
        [(run.info.run_name, run.data.tags.get("alignflow.ended_by")) for run in reaped]
    new = [v for v in mlflow_client.search_model_versions("name='alignflow-policy'") if v.version not in before]
    sources = [(v.tags["alignflow.source_run_id"], v.tags["alignflow.eval_run_id"]) for v in new]
    assert len(new) == 1 and len(set(sources)) == len(sources)
