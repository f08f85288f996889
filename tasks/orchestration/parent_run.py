"""The parent MLflow run of a flow, shared by every flow so that none forgets a redaction or a lineage tag."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import mlflow
from prefect import get_run_logger
from prefect.runtime import flow_run

from tasks.cai.versioning import manifest_tags
from tasks.core.config import PipelineConfig
from tasks.core.config_files import HashableConfig
from tasks.core.lineage import Lineage, dvc_data_md5, git_sha
from tasks.core.secrets import redact_mapping, strip_credentials
from tasks.data.expectations import TRAINING_FILES
from tasks.run.lifecycle import tracked_run


def flow_lineage(config_hash: str, cfg: PipelineConfig) -> Lineage:
    """Where this flow run comes from: code, config, data (and the data's own tags), and the Prefect flow run."""
    return Lineage(
        git_sha=git_sha(),
        config_hash=config_hash,
        data_md5=dvc_data_md5(cfg.data.dir),
        flow_run_id=flow_run.get_id(),
        # Data made by the constitutional flow carries its constitution's hash into every model trained on it.
        data_tags=tuple(sorted(manifest_tags(cfg.data.path(name) for name in TRAINING_FILES).items())),
    )


@contextmanager
def parent_run(run_name: str, lineage: Lineage, params: HashableConfig, *,
               configs: Mapping[str, HashableConfig], files: Mapping[str, Path] | None = None,
               tags: Mapping[str, str] | None = None) -> Iterator[Lineage]:
    """The flow's MLflow run: `params` flattened as params, each of `configs` as a YAML artifact (credentials
    masked everywhere), `files` as artifacts under their folder name, lineage and `tags` as tags (redacted).

    Yields the lineage with this run as the parent of every stage run.
    """
    with tracked_run(run_name=run_name, tags=redact_mapping({**lineage.tags(), **(tags or {})})) as run:
        mlflow.log_params(params.flat_params())
        for artifact, config in configs.items():
            mlflow.log_dict(config.redacted_dump(), artifact)
        for folder, path in (files or {}).items():
            mlflow.log_artifact(str(path), artifact_path=folder)
        get_run_logger().info("MLflow parent run %s (tracking URI %s)", run.info.run_id,
                              strip_credentials(mlflow.get_tracking_uri()))
        yield replace(lineage, parent_run_id=run.info.run_id)
