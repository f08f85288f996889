"""Where MLflow runs go: the configured tracking store and experiment."""

from __future__ import annotations

import os

import mlflow

from tasks.core import paths
from tasks.core.config import PipelineConfig
from tasks.core.secrets import split_credentials


def configure_tracking(cfg: PipelineConfig) -> str:
    """Point MLflow at the configured store (config > $MLFLOW_TRACKING_URI > local SQLite); returns the experiment id."""
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


# MLflow 3's UI opens an experiment without this tag in its GenAI mode, on an empty traces overview.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"


def _open_on_the_runs(experiment_id: str) -> None:
    """Tag the experiment as model development, so the UI opens on its runs; a kind someone chose is kept."""
    experiment = mlflow.get_experiment(experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)


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
