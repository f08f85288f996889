"""MLflow plumbing shared by the stages: where runs go, how models are logged, resolved and registered."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from transformers import TrainerCallback

from flows import paths
from flows.config import PipelineConfig
from flows.secrets import split_credentials
from models.loading import load_model_and_tokenizer

# The pyfunc wrapper each kind of model is served with (logged "from code").
_PYFUNC_CODE = {"policy": Path(__file__).with_name("policy_pyfunc.py"),
                "reward": Path(__file__).with_name("reward_pyfunc.py")}
_MODELS_PACKAGE = paths.PROJECT_ROOT / "models"
HF_ARTIFACT = "hf_model"  # name of the Hugging Face folder inside a logged alignflow model
_SERVING_REQUIREMENTS = ["torch", "transformers", "safetensors", "pandas"]
_SIGNATURES = {
    # A policy takes raw user prompts and answers with greedy completions; max_new_tokens may be set per request.
    "policy": ModelSignature(
        inputs=Schema([ColSpec("string", "prompt")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", 48)]),
    ),
    # A reward model scores (prompt, response) pairs.
    "reward": ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "response")]),
        outputs=Schema([ColSpec("double")]),
    ),
}


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
    return experiment_id


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


def log_hf_model(hf_dir: Path, cfg: PipelineConfig, kind: Literal["policy", "reward"] = "policy") -> str:
    """Log a Hugging Face folder as an MLflow pyfunc model (servable with `mlflow models serve`); returns its URI.

    The model's prompt format travels with it, so a served model formats requests exactly as training did.
    """
    if kind not in _PYFUNC_CODE:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(_PYFUNC_CODE)}")
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(_PYFUNC_CODE[kind]),
        artifacts={HF_ARTIFACT: str(hf_dir)},
        code_paths=[str(_MODELS_PACKAGE)],
        model_config={
            "prompt_format": cfg.model.prompt_format,
            "prompt_template": cfg.model.prompt_template,
            "max_new_tokens": cfg.eval.max_new_tokens,
        },
        pip_requirements=_SERVING_REQUIREMENTS,
        signature=_SIGNATURES[kind],
    )
    return info.model_uri


def resolve_model_source(uri: str, download_dir: Path) -> str:
    """Turn a stage input URI into something `from_pretrained` accepts.

    `runs:/…` and `models:/…` (MLflow) are downloaded and their Hugging Face folder is returned; an existing
    local folder is used as is; anything else is taken to be a hub id.
    """
    if uri.startswith(("runs:/", "models:/")):
        download_dir.mkdir(parents=True, exist_ok=True)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(download_dir)))
        return str(_hf_folder(local, uri))
    return uri


def load_stage_model(cfg: PipelineConfig, uri: str, download_dir: Path, dtype: str | None = None):
    """(model, tokenizer) behind a stage input URI, loaded with the config's model settings.

    `model.revision` applies only to the configured pretrained hub model; `dtype` defaults to `model.dtype`.
    """
    return load_model_and_tokenizer(
        resolve_model_source(uri, download_dir),
        revision=cfg.model.revision if uri == cfg.model.pretrained else None,
        trust_remote_code=cfg.model.trust_remote_code,
        dtype=dtype or cfg.model.dtype,
    )


def _hf_folder(model_dir: Path, uri: str) -> Path:
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        raise FileNotFoundError(f"{uri}: no MLmodel file in the downloaded artifacts ({model_dir})")
    flavor = yaml.safe_load(mlmodel.read_text()).get("flavors", {}).get("python_function", {})
    artifact = flavor.get("artifacts", {}).get(HF_ARTIFACT)
    if artifact is None:
        raise ValueError(f"{uri}: not an alignflow model (no {HF_ARTIFACT!r} artifact in its MLmodel)")
    return model_dir / artifact["path"]


def register_version(model_uri: str, name: str, alias: str, tags: dict[str, str]) -> ModelVersion:
    """Register `model_uri` as a new version of `name`, tag it, and point `alias` at it."""
    version = mlflow.register_model(model_uri, name, tags=tags)
    MlflowClient().set_registered_model_alias(name, alias, version.version)
    return version


class MlflowMetricsCallback(TrainerCallback):
    """Sends the Trainer's logged scalars to the active MLflow run as `<prefix>/<name>` at the global step."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            scalars = {f"{self.prefix}/{k}": float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            mlflow.log_metrics(scalars, step=state.global_step, synchronous=False)  # off the training loop
        return control

    def on_train_end(self, args, state, control, **kwargs):
        mlflow.flush_async_logging()
        return control
