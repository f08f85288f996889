"""Run a stage as a deployment on a Prefect work pool, and hand its result back through MLflow.

The pipeline sends a `StageRequest` (stage name, resolved config, lineage, input results) as the parameters
of a flow run of deployment `<dispatch.flow>/<pool>`. A worker polling that pool runs `flows.stage_flow`,
which runs the stage and attaches its `StageResult` to the stage's MLflow run. The pipeline waits for the flow
run and reads the result back from MLflow. Models and datasets travel as MLflow URIs, so the worker shares no
disk with the pipeline, and credentials come from each side's own environment, never from the request.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow import MlflowClient
from pydantic import BaseModel

from tasks.core.config import PipelineConfig, parse_config
from tasks.core.errors import AlignflowError, ConfigError
from tasks.core.lineage import Lineage
from tasks.core.secrets import strip_credentials
from tasks.core.stage_names import DISPATCHABLE
from tasks.core.tags import TAG_PREFIX
from tasks.orchestration.stage_table import STAGES
from tasks.run.contract import StageResult
from tasks.run.tracking import configure_tracking

RESULT_ARTIFACT = "alignflow/stage_result.json"
FLOW_RUN_TAG = f"{TAG_PREFIX}dispatch.flow_run_id"
DEPLOYMENT_TAG = f"{TAG_PREFIX}dispatch.deployment"
_SERVER_SCHEMES = ("http://", "https://", "databricks")


class StageDispatchError(AlignflowError):
    """A dispatched stage failed on its worker, or could not be dispatched at all. Not retried."""


class StageCrashed(RuntimeError):
    """The worker's infrastructure died under a dispatched stage: worth another try."""


class StageRequest(BaseModel):
    """Everything a worker needs to run one stage: JSON all the way, so it can be a flow run's parameters."""

    stage: str
    config: dict[str, Any]
    lineage: dict[str, Any]
    inputs: dict[str, StageResult] = {}
    options: dict[str, str] = {}  # keyword inputs that are not stage results, e.g. evaluate's label

    @classmethod
    def build(cls, stage: str, cfg: PipelineConfig, lineage: Lineage, inputs: dict[str, Any]) -> StageRequest:
        # The worker authenticates with its own credentials, so the URI it gets carries none.
        tracking = cfg.tracking.model_copy(update={"tracking_uri": strip_credentials(mlflow.get_tracking_uri())})
        return cls(
            stage=stage,
            config=cfg.model_copy(update={"tracking": tracking}).model_dump(mode="json"),
            lineage={**vars(lineage), "data_tags": [list(pair) for pair in lineage.data_tags]},
            inputs={name: value for name, value in inputs.items() if isinstance(value, StageResult)},
            options={name: value for name, value in inputs.items() if isinstance(value, str)},
        )

    def run(self) -> StageResult:
        """Run the stage here, in this process."""
        if self.stage not in STAGES:
            raise StageDispatchError(f"stage request names unknown stage {self.stage!r}; expected one of "
                                     f"{', '.join(STAGES)}")
        cfg = parse_config(self.config, source=f"stage request for {self.stage}")
        configure_tracking(cfg)
        lineage = Lineage(**{**self.lineage, "data_tags": tuple(tuple(pair) for pair in self.lineage["data_tags"])})
        return STAGES[self.stage].run(cfg, lineage, **self.inputs, **self.options)


def check_dispatchable(cfg: PipelineConfig) -> None:
    """Dispatched stages need a tracking server both sides reach: a local store would strand their results."""
    if not cfg.dispatch.pools:
        return
    uri = mlflow.get_tracking_uri()
    if not uri.startswith(_SERVER_SCHEMES):
        raise ConfigError(f"dispatch.pools sends {', '.join(sorted(cfg.dispatch.pools))} to work pools, which needs an "
                          f"MLflow tracking server (http[s]://…); the tracking URI is {strip_credentials(uri)}")
    unknown = set(cfg.dispatch.pools) - set(DISPATCHABLE)
    if unknown:
        raise ConfigError(f"dispatch.pools: stages {sorted(unknown)} cannot be dispatched; "
                          f"expected some of {', '.join(DISPATCHABLE)}")


def dispatch_stage(stage: str, cfg: PipelineConfig, lineage: Lineage, inputs: dict[str, Any]) -> StageResult:
    """Run `stage` on a worker of its configured pool and wait for it; returns the result it logged to MLflow."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    pool = cfg.dispatch.pools[stage]
    deployment = f"{cfg.dispatch.flow}/{pool}"
    request = StageRequest.build(stage, cfg, lineage, inputs)
    label = inputs.get("label")
    try:
        flow_run = run_deployment(
            deployment,
            parameters={"request": request.model_dump(mode="json")},
            flow_run_name=f"{stage}-{label}" if label else stage,
            timeout=cfg.dispatch.timeout_s,
            poll_interval=cfg.dispatch.poll_interval_s,
            tags=["alignflow", f"stage:{stage}"],
        )
    except ObjectNotFound:
        raise StageDispatchError(f"stage {stage}: no deployment {deployment!r} on the Prefect server; create it with "
                                 "`prefect deploy --prefect-file infra/prefect.yaml --all`") from None
    state = flow_run.state
    where = f"stage {stage} on work pool {pool!r} (flow run {flow_run.name}, id {flow_run.id})"
    if state is not None and state.is_crashed():
        raise StageCrashed(f"{where} crashed: {state.message}")
    if state is None or not state.is_final():
        raise StageDispatchError(f"{where} did not finish within dispatch.timeout_s={cfg.dispatch.timeout_s}; "
                                 f"it is {state.name if state else 'unknown'}")
    if not state.is_completed():
        raise StageDispatchError(f"{where} ended {state.name}: {state.message}")
    return fetch_result(cfg, str(flow_run.id), where)


def publish_result(result: StageResult, flow_run_id: str, deployment: str | None = None) -> None:
    """Attach a dispatched stage's result to its MLflow run; the flow-run tag goes last, so a tagged run is complete."""
    client = MlflowClient()
    client.log_text(result.run_id, result.model_dump_json(indent=2), RESULT_ARTIFACT)
    if deployment:
        client.set_tag(result.run_id, DEPLOYMENT_TAG, deployment)
    client.set_tag(result.run_id, FLOW_RUN_TAG, flow_run_id)


def fetch_result(cfg: PipelineConfig, flow_run_id: str, where: str) -> StageResult:
    """The result the stage flow run `flow_run_id` attached to its MLflow run, in the configured experiment."""
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    runs = MlflowClient().search_runs([experiment], filter_string=f"tags.`{FLOW_RUN_TAG}` = '{flow_run_id}'",
                                      max_results=2)
    if len(runs) != 1:
        raise StageDispatchError(f"{where} completed, but {len(runs)} MLflow runs in experiment {experiment} carry "
                                 f"{FLOW_RUN_TAG}={flow_run_id}; expected exactly one")
    text = mlflow.artifacts.load_text(f"runs:/{runs[0].info.run_id}/{RESULT_ARTIFACT}")
    return StageResult.model_validate_json(text)
