"""The datasets the validate stage passed, wherever a stage runs: nothing reads data validation has not seen."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource

from tasks.core.errors import DataValidationError
from tasks.core.hashing import md5_file
from tasks.run.contract import StageResult


def dataset_artifact_dir(name: str) -> str:
    return f"datasets/{name}"


def validated_file(data: StageResult, name: str, download_dir: Path) -> Path:
    """The validated dataset `name` on this machine: the validate stage's own file when it is here unchanged,
    else a copy downloaded from the validate run. Either way its md5 must be the one validation recorded, and the
    active run (the stage reading it) records it as a dataset input."""
    local = Path(data.outputs[name])
    expected = data.output_hashes[name]
    if local.is_file() and md5_file(local) == expected:
        _log_input(name, local, expected)
        return local
    uri = f"runs:/{data.run_id}/{dataset_artifact_dir(name)}/{local.name}"
    download_dir.mkdir(parents=True, exist_ok=True)
    copy = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(download_dir)))
    downloaded = md5_file(copy)
    if downloaded != expected:
        raise DataValidationError(f"{uri}: md5 {downloaded} differs from the validated file's {expected}")
    _log_input(name, copy, expected)
    return copy


def _log_input(name: str, path: Path, md5: str) -> None:
    """The dataset as an MLflow input of the active run (the UI's Datasets column), named by kind and identified
    by the md5 validation recorded; context "evaluation" for held-out sets, else "training"."""
    if mlflow.active_run() is None:  # a follower process of a launch tracks nothing
        return
    dataset = MetaDataset(LocalArtifactDatasetSource(str(path.resolve())), name=name, digest=md5)
    mlflow.log_input(dataset, context="evaluation" if "eval" in name else "training")
