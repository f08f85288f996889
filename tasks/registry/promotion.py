"""Moving the champion: gated or manual promotion, rejection, rollback.

Aliases are the source of truth (`champion`, `previous-champion`); version tags keep the audit trail
(`alignflow.promotion`, `alignflow.promoted_at`, `alignflow.gate.*`, `alignflow.rolled_back`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from models.failpoints import failpoint
from tasks.core.config import RegistrySection
from tasks.core.tags import (
    DECISION_TAG,
    GATE_TAG_PREFIX,
    NOT_PROMOTED_TAG,
    PROMOTED_AT_TAG,
    PROMOTION_REASON_TAG,
    PROMOTION_TAG,
    ROLLED_BACK_AT_TAG,
    ROLLED_BACK_TAG,
    SOURCE_STAGE_TAG,
)
from tasks.registry.gates import GateDecision
from tasks.registry.versions import RegistryError, alias_change, all_versions, get_version, model_aliases

log = logging.getLogger(__name__)


def promote_version(
    name: str, version: str, registry: RegistrySection, *, reason: str, decision: GateDecision | None = None
) -> None:
    """Make `version` the champion; the champion it replaces becomes `previous-champion`.


    Tags the version with how (`gated` when a decision is given, else `manual`), when and why it was promoted,
    and the gate results. Promoting the version that already is champion changes no alias and no promotion tag.
    A failed `decision` raises `RegistryError` (a manual promotion passes no decision). Nothing is changed when
    the model or version does not exist.
    """
    client = MlflowClient()
    version = str(version)
    if decision is not None and not decision.passed:
        raise RegistryError(f"{name} version {version} failed its gates ({decision.summary()}); not promoted")
    aliases = model_aliases(client, name)
    promoted = get_version(client, name, version)  # raises RegistryError when it does not exist
    current = aliases.get(registry.champion_alias)
    if decision is not None:
        tag_decision(client, name, version, decision)
    if current == version and PROMOTED_AT_TAG in promoted.tags:
        log.info("%s version %s is already the %s; nothing to change", name, version, registry.champion_alias)
        return
    if current == version:  # moved by a process that died before tagging it: only the tags are missing
        current = aliases.get(registry.previous_champion_alias)
    else:
        with alias_change(client, name, {registry.champion_alias: current, registry.previous_champion_alias:
                                         aliases.get(registry.previous_champion_alias)}):
            if current is not None:
                client.set_registered_model_alias(name, registry.previous_champion_alias, current)
                failpoint("promote.alias")
            client.set_registered_model_alias(name, registry.champion_alias, version)
    tags = {
        PROMOTION_TAG: "gated" if decision is not None else "manual",
        PROMOTED_AT_TAG: _now(),
        PROMOTION_REASON_TAG: reason,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    describe(client, promoted, f"{decision.headline() if decision else 'promoted by hand'}; "
                               f"{registry.champion_alias} since {tags[PROMOTED_AT_TAG][:10]}")
    _delete_tag(client, name, version, ROLLED_BACK_TAG)  # promoted again: it is no longer a rolled-back version
    _delete_tag(client, name, version, NOT_PROMOTED_TAG)
    log.info("%s version %s is now %s (was %s): %s", name, version, registry.champion_alias, current, reason)


def record_rejection(name: str, version: str, decision: GateDecision, candidate_alias: str) -> None:
    """Tag and describe a candidate version with its failed gate decision. If it holds `candidate_alias` it
    loses it: the registry's list page must not show a rejected model as the one waiting for promotion."""
    client = MlflowClient()
    get_version(client, name, str(version))
    tag_decision(client, name, str(version), decision)
    if model_aliases(client, name).get(candidate_alias) == str(version):
        client.delete_registered_model_alias(name, candidate_alias)


def tag_decision(client: MlflowClient, name: str, version: str, decision: GateDecision) -> None:
    """The decision as tags (every gate's value and bound) and, in one line, as the version's description."""
    client.set_model_version_tag(name, version, DECISION_TAG, "pass" if decision.passed else "fail")
    for gate in decision.gates:
        client.set_model_version_tag(name, version, f"{GATE_TAG_PREFIX}{gate.key}", gate.tag_value())
    describe(client, client.get_model_version(name, version), decision.headline())


def describe(client: MlflowClient, version: ModelVersion, text: str) -> None:
    """One line in the version's description, led by the method that trained it: "PPO: failed …"."""
    stage = version.tags.get(SOURCE_STAGE_TAG, "")
    line = f"{stage.upper()}: {text}" if stage else text
    client.update_model_version(version.name, str(version.version), description=line)


def rollback(name: str, registry: RegistrySection) -> str:
    """Hand `champion` back to `previous-champion`; returns the new champion version.


    The demoted champion is tagged `alignflow.rolled_back=true`. The `previous-champion` alias then moves to the
    version that was champion before the restored one: the latest `alignflow.promoted_at` earlier than the
    restored version's own, skipping rolled-back versions and the two involved here; it is removed when there
    is none. So repeated rollbacks walk back through the promotion history. With no previous champion this raises
    `RegistryError` and changes nothing.
    """
    client = MlflowClient()
    aliases = model_aliases(client, name)
    restored = aliases.get(registry.previous_champion_alias)
    if restored is None:
        raise RegistryError(
            f"nothing to roll back: {name} has no '{registry.previous_champion_alias}' alias "
            f"(current {registry.champion_alias}: {_vname(aliases.get(registry.champion_alias))})"
        )
    demoted = aliases.get(registry.champion_alias)
    versions = {str(v.version): v for v in all_versions(client, name)}
    earlier = _champion_before(versions, restored, exclude={restored, demoted})


    with alias_change(client, name, {registry.champion_alias: demoted, registry.previous_champion_alias: restored}):
        client.set_registered_model_alias(name, registry.champion_alias, restored)
        if earlier is None:
            client.delete_registered_model_alias(name, registry.previous_champion_alias)
        else:
            client.set_registered_model_alias(name, registry.previous_champion_alias, earlier)
    if demoted is not None and demoted != restored:
        client.set_model_version_tag(name, demoted, ROLLED_BACK_TAG, "true")
        client.set_model_version_tag(name, demoted, ROLLED_BACK_AT_TAG, when := _now())
        describe(client, client.get_model_version(name, demoted), f"rolled back on {when[:10]}, "
                                                                  f"{registry.champion_alias} now version {restored}")
    log.warning("%s rolled back: %s %s -> %s; %s now %s", name, registry.champion_alias, demoted, restored,
                registry.previous_champion_alias, earlier or "unset")
    return restored


def _champion_before(versions: Mapping[str, ModelVersion], restored: str, exclude: set[str | None]) -> str | None:
    restored_at = _promoted_at(versions.get(restored))
    if restored_at is None:
        return None
    best: tuple[datetime, int, str] | None = None
    for number, version in versions.items():
        when = _promoted_at(version)
        if number in exclude or when is None or version.tags.get(ROLLED_BACK_TAG) == "true" or when >= restored_at:
            continue
        if best is None or (when, int(number)) > best[:2]:
            best = (when, int(number), number)
    return best[2] if best else None


def _promoted_at(version: ModelVersion | None) -> datetime | None:
    raw = version.tags.get(PROMOTED_AT_TAG) if version is not None else None
    try:
        return datetime.fromisoformat(raw) if raw else None
    except ValueError:
        return None


def _delete_tag(client: MlflowClient, name: str, version: str, key: str) -> None:
    if key in client.get_model_version(name, version).tags:
        client.delete_model_version_tag(name, version, key)


def _vname(version: str | None) -> str:
    return f"version {version}" if version is not None else "none"


def _now() -> str:
    return datetime.now(UTC).isoformat()
