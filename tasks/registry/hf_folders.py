"""From a model URI to the Hugging Face folders behind it: the full weights, then any LoRA adapters over them.

Self-contained (MLflow, PyYAML and `models/` only): a served model imports it from its own code folder
(`log_hf_model` ships it), so serving resolves an adapter's base exactly as the stages do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow
import yaml
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

from models.adapters import adapter_chain

HF_ARTIFACT = "hf_model"  # name of the Hugging Face folder inside a logged alignflow model


def resolve_model_source(uri: str, download_dir: Path) -> str:
    """Turn a stage input URI into something `from_pretrained` accepts.

    `runs:/…` and `models:/…` (MLflow) give the Hugging Face folder of the logged model: read in place when the
    artifact store is a local folder (a 538 MB model is not copied once per stage), else downloaded into
    `download_dir`. An existing local folder is used as is; anything else is taken to be a hub id.
    """
    if uri.startswith(("runs:/", "models:/")):
        if _stored_locally(uri):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))  # the store's own path: read only
        else:
            download_dir.mkdir(parents=True, exist_ok=True)
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(download_dir)))
        return str(hf_folder(local, uri))
    return uri


def model_chain(uri: str, download_dir: Path) -> list[str]:
    """[full-weights source, adapter folders...] behind a model URI (see `models.adapters`)."""
    def fetch(base: str) -> str:
        return resolve_model_source(base, download_dir / hashlib.sha256(base.encode()).hexdigest()[:12])

    return adapter_chain(resolve_model_source(uri, download_dir), fetch)


def hf_folder(model_dir: Path, uri: str) -> Path:
    """The Hugging Face folder inside a logged alignflow model's files."""
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        raise FileNotFoundError(f"{uri}: no MLmodel file in the downloaded artifacts ({model_dir})")
    flavor = yaml.safe_load(mlmodel.read_text()).get("flavors", {}).get("python_function", {})
    artifact = flavor.get("artifacts", {}).get(HF_ARTIFACT)
    if artifact is None:
        raise ValueError(f"{uri}: not an alignflow model (no {HF_ARTIFACT!r} artifact in its MLmodel)")
    return model_dir / artifact["path"]


def _stored_locally(uri: str) -> bool:
    """Whether a `models:/` URI's files sit in a local folder (a file or SQLite store's artifact root)."""
    if not uri.startswith("models:/"):
        return False  # a runs:/ path can name part of a run's artifacts; always download those
    try:
        underlying = ModelsArtifactRepository.get_underlying_uri(uri)
    except mlflow.exceptions.MlflowException:
        return False
    return isinstance(get_artifact_repository(underlying), LocalArtifactRepository)
