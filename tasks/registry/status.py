"""What the registry says about a policy model: one row per version, for `alignflow status`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from mlflow import MlflowClient

from tasks.core.config import RegistrySection
from tasks.core.tags import (
    CONFIG_HASH_TAG,
    DATA_MD5_TAG,
    DECISION_TAG,
    GATE_TAG_PREFIX,
    GIT_SHA_TAG,
    METRIC_TAG_PREFIX,
    PARENT_TAG_PREFIX,
    PROMOTED_AT_TAG,
    PROMOTION_REASON_TAG,
    PROMOTION_TAG,
    ROLLED_BACK_TAG,
    SOURCE_RUN_TAG,
    SOURCE_STAGE_TAG,
    TAG_PREFIX,
)
from tasks.registry.versions import RegistryError, all_versions, model_aliases

_LINEAGE_TAGS = (GIT_SHA_TAG, CONFIG_HASH_TAG, DATA_MD5_TAG)


def registry_status(name: str, registry: RegistrySection) -> list[dict]:
    """One row per version of `name`, newest first; [] when the model is not registered yet.


    Row keys: version, model_uri, aliases, created_at, gate_decision, promotion, promoted_at, promotion_reason,
    rolled_back, source_stage, source_run_id, run_id, lineage (git sha, config hash, DVC md5, parent.* tags),
    metrics (from the `alignflow.eval/...` tags, as floats) and gates (the `alignflow.gate.*` tags).
    """
    client = MlflowClient()
    try:
        aliases = model_aliases(client, name)
    except RegistryError:
        return []
    by_version: dict[str, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(number, []).append(alias)
    order = {registry.champion_alias: 0, registry.previous_champion_alias: 1, registry.candidate_alias: 2}
    rows = []
    for version in sorted(all_versions(client, name), key=lambda v: int(v.version), reverse=True):
        tags = version.tags
        number = str(version.version)
        rows.append({
            "version": number,
            "model_uri": f"models:/{name}/{number}",
            "aliases": sorted(by_version.get(number, []), key=lambda a: (order.get(a, 9), a)),
            "created_at": _iso_ms(version.creation_timestamp),
            "gate_decision": tags.get(DECISION_TAG, ""),
            "promotion": tags.get(PROMOTION_TAG, ""),
            "promoted_at": tags.get(PROMOTED_AT_TAG, ""),
            "promotion_reason": tags.get(PROMOTION_REASON_TAG, ""),
            "rolled_back": tags.get(ROLLED_BACK_TAG) == "true",
            "source_stage": tags.get(SOURCE_STAGE_TAG, ""),
            "source_run_id": tags.get(SOURCE_RUN_TAG, ""),
            "run_id": version.run_id or "",
            "lineage": {k: v for k, v in sorted(tags.items())
                        if k in _LINEAGE_TAGS or k.startswith(PARENT_TAG_PREFIX)},
            "metrics": _metric_tags(tags),
            "gates": {k[len(GATE_TAG_PREFIX):]: v for k, v in sorted(tags.items()) if k.startswith(GATE_TAG_PREFIX)},
        })
    return rows


def alias_versions(name: str) -> dict[str, str]:
    """Alias → version of a registered model; raises RegistryError when the model does not exist."""
    return model_aliases(MlflowClient(), name)


def _metric_tags(tags: Mapping[str, str]) -> dict[str, float]:
    metrics = {}
    for key, raw in sorted(tags.items()):
        if key.startswith(METRIC_TAG_PREFIX):
            try:
                metrics[key[len(TAG_PREFIX):]] = float(raw)
            except ValueError:
                continue
    return metrics


def _iso_ms(millis: int | None) -> str:
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds") if millis else ""
