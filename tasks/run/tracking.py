"""Where MLflow runs go: the configured tracking store and experiment."""

from __future__ import annotations

import os

import mlflow

from tasks.core import paths
from tasks.core.config import PipelineConfig
from tasks.core.secrets import split_credentials, strip_credentials


def configure_tracking(cfg: PipelineConfig) -> str:
    """Point MLflow at the configured store (config > $MLFLOW_TRACKING_URI > local SQLite);
    returns the experiment id."""
    uri = use_tracking_uri(cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                           or paths.DEFAULT_TRACKING_URI)
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    elif uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        # A local store keeps artifacts beside it, not in ./mlruns of whatever folder the run started in.
        root = paths.DEFAULT_ARTIFACT_ROOT.resolve()
        experiment_id = mlflow.create_experiment(cfg.tracking.experiment, artifact_location=root.as_uri())
    else:
        experiment_id = mlflow.create_experiment(cfg.tracking.experiment)
    mlflow.set_experiment(experiment_id=experiment_id)
    _open_on_the_runs(experiment_id)
    return experiment_id


# MLflow 3's UI opens an experiment without this tag in its GenAI mode, on an empty traces overview. MLflow
# 3.17's UI ignores the tag for a workflow switch the browser remembers (GenAI unless chosen), which a link's
# `workflowType` parameter sets: `ui_link` gives that link.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"
LOCAL_UI = "http://127.0.0.1:5000"  # where `make ui` serves a local store


def _open_on_the_runs(experiment_id: str) -> None:
    """Tag the experiment as model development, so the UI opens on its runs; a kind someone chose is kept."""
    experiment = mlflow.get_experiment(experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)


def ui_link(run_id: str) -> str:
    """The MLflow UI page of the runs of `run_id`'s experiment, opened in its model-training mode."""
    experiment_id = mlflow.get_run(run_id).info.experiment_id
    uri = mlflow.get_tracking_uri()
    base = strip_credentials(uri).rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def use_tracking_uri(uri: str) -> str:
    """Set MLflow's tracking URI. Credentials inside a server URI (`http://user:password@host`) become MLflow's
    username/password settings instead: MLflow prints its URI ("View run at …"), which must hold no password."""
    if uri.startswith(("http://", "https://")):
        uri, username, password = split_credentials(uri)
        if username is not None:
            os.environ["MLFLOW_TRACKING_USERNAME"] = username
            os.environ["MLFLOW_TRACKING_PASSWORD"] = password or ""
    mlflow.set_tracking_uri(uri)
    return uri


def descendant_runs(parent_run_id: str) -> list:
    """Every run below a parent run (children, their children, ...), in any experiment."""
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parent_of = {run.info.run_id: run.data.tags.get("mlflow.parentRunId") for run in runs}

    def descends(run_id: str) -> bool:
        ancestor = parent_of.get(run_id)
        while ancestor and ancestor != parent_run_id:
            ancestor = parent_of.get(ancestor)
        return ancestor == parent_run_id

    return [run for run in runs if descends(run.info.run_id)]
