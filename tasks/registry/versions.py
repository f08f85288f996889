"""Registered model versions: one place builds a version's tags, one registers it under an alias."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from tasks.core.errors import AlignflowError
from tasks.core.lineage import Lineage
from tasks.core.tags import EVAL_RUN_TAG, FLOW_RUN_TAG, SOURCE_RUN_TAG, SOURCE_STAGE_TAG, TAG_PREFIX


class RegistryError(AlignflowError):
    """A registry operation cannot be done as asked (no such version, nothing to roll back); nothing was changed."""


def version_tags(source_stage: str, source_run_id: str, metrics: dict[str, float], lineage: Lineage,
                 eval_run_id: str | None = None) -> dict[str, str]:
    """What a registered version carries: the lineage of the run that trained it, where it came from, and its
    metrics, so the registry alone tells where a model came from and how it scored."""
    training_tags = MlflowClient().get_run(source_run_id).data.tags
    tags = {k: v for k, v in training_tags.items() if k.startswith(TAG_PREFIX)}
    tags.update({SOURCE_STAGE_TAG: source_stage, SOURCE_RUN_TAG: source_run_id})
    if eval_run_id is not None:
        tags[EVAL_RUN_TAG] = eval_run_id
    tags.update({f"{TAG_PREFIX}{name}": f"{value:.6g}" for name, value in metrics.items()})
    if lineage.flow_run_id:
        tags[FLOW_RUN_TAG] = lineage.flow_run_id
    return tags


def register_version(model_uri: str, name: str, alias: str, tags: dict[str, str]) -> ModelVersion:
    """Register `model_uri` as a new version of `name`, tag it, and point `alias` at it."""
    version = mlflow.register_model(model_uri, name, tags=tags)
    MlflowClient().set_registered_model_alias(name, alias, version.version)
    return version


def model_aliases(client: MlflowClient, name: str) -> dict[str, str]:
    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"no registered model named '{name}' at {mlflow.get_tracking_uri()}") from None
        raise
    return {alias: str(number) for alias, number in model.aliases.items()}


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise RegistryError(f"{name} has no version {version}") from None
        raise


def all_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    query = "name = '{}'".format(name.replace("'", "\\'"))
    versions: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(query, page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            return versions
