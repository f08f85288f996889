"""Registered model versions: one place builds a version's tags, one registers it under an alias."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from models.failpoints import failpoint
from tasks.core.errors import AlignflowError
from tasks.core.lineage import Lineage
from tasks.core.tags import (
    ALIAS_CHANGE_TAG,
    EVAL_RUN_TAG,
    FLOW_RUN_TAG,
    SOURCE_RUN_TAG,
    SOURCE_STAGE_TAG,
    TAG_PREFIX,
)
from tasks.run.lifecycle import PROCESS_TAG, process_gone, process_tag

log = logging.getLogger(__name__)


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


def register_version(model_uri: str, name: str, alias: str, tags: dict[str, str],
                     description: str | None = None) -> ModelVersion:
    """Register `model_uri` as a new version of `name`, tagged and described, and point `alias` at it.

    Idempotent: a version registered earlier from the same training run and evaluation (a rerun after the
    process died between creating the version and moving the alias) is completed and reused, not duplicated.
    """
    client = MlflowClient()
    version = _registered_earlier(client, name, tags) or mlflow.register_model(model_uri, name, tags=tags)
    if description is not None and version.description != description:
        version = client.update_model_version(name, str(version.version), description=description)
    failpoint("register.version")
    client.set_registered_model_alias(name, alias, version.version)
    return version


def _registered_earlier(client: MlflowClient, name: str, tags: dict[str, str]) -> ModelVersion | None:
    source = {key: tags[key] for key in (SOURCE_RUN_TAG, EVAL_RUN_TAG) if key in tags}
    if SOURCE_RUN_TAG not in source:
        return None
    try:
        earlier = [v for v in all_versions(client, name) if all(v.tags.get(k) == value for k, value in source.items())]
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    if not earlier:
        return None
    version = max(earlier, key=lambda v: int(v.version))
    for key, value in tags.items():  # the earlier attempt may have died before tagging it
        if version.tags.get(key) != value:
            client.set_model_version_tag(name, str(version.version), key, value)
    return version


def model_aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """The model's aliases as one consistent state: an alias change its dead process left half done is undone
    first, and one still in progress reads as the aliases before it."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"no registered model named '{name}' at {mlflow.get_tracking_uri()}") from None
        raise
    aliases = {alias: str(number) for alias, number in model.aliases.items()}
    note = _alias_change_note(model.tags)
    if note is None:
        return aliases
    if not process_gone(note["owner"], age=time.time() - note["at"]):
        return {**{a: v for a, v in aliases.items() if a not in note["before"]},
                **{a: v for a, v in note["before"].items() if v is not None}}
    _undo(client, name, note["before"])
    return {alias: str(number) for alias, number in client.get_registered_model(name).aliases.items()}


@contextmanager
def alias_change(client: MlflowClient, name: str, before: dict[str, str | None]) -> Iterator[None]:
    """Move several aliases as one change. MLflow moves one alias per call, so the aliases' values `before` are
    written down first (a tag on the registered model, with the process that moves them) and the note is removed
    once every alias has moved. Meanwhile readers (`model_aliases`) see the aliases as they were; if the process
    dies in between, the next reader puts them back: a killed promotion changes no alias."""
    note = {"before": before, "owner": process_tag()[PROCESS_TAG], "at": time.time()}
    client.set_registered_model_tag(name, ALIAS_CHANGE_TAG, json.dumps(note, sort_keys=True))
    try:
        yield
    except Exception:  # an error, not a kill: undo now (if the registry is unreachable, the note stays for later)
        try:
            _undo(client, name, before)
        except MlflowException:
            log.exception("%s: could not undo a failed alias change yet; the next reader will", name)
        raise
    client.delete_registered_model_tag(name, ALIAS_CHANGE_TAG)


def _alias_change_note(model_tags: dict[str, str]) -> dict | None:
    raw = model_tags.get(ALIAS_CHANGE_TAG)
    return json.loads(raw) if raw is not None else None


def _undo(client: MlflowClient, name: str, before: dict[str, str | None]) -> None:
    for alias, version in before.items():
        if version is not None:
            client.set_registered_model_alias(name, alias, version)
        elif alias in client.get_registered_model(name).aliases:
            client.delete_registered_model_alias(name, alias)
    client.delete_registered_model_tag(name, ALIAS_CHANGE_TAG)
    log.warning("%s: undid an alias change its process did not finish; aliases back to %s", name, before)


def champion_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version behind `alias` as `model_aliases` reads it, or None when the model or the alias does not
    exist (any other registry error is raised: "no champion" must not stand in for "could not ask").
    Existence is asked by search first: a server with basic auth answers a read of a model nobody has
    registered yet "permission denied", not "does not exist"."""
    if not client.search_registered_models(filter_string=_name_filter(name)):
        return None
    try:
        version = model_aliases(client, name).get(alias)
    except RegistryError:
        return None
    return None if version is None else client.get_model_version(name, version)


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise RegistryError(f"{name} has no version {version}") from None
        raise


def _name_filter(name: str) -> str:
    return "name = '{}'".format(name.replace("'", "\\'"))


def all_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    query = _name_filter(name)
    versions: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(query, page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            return versions
