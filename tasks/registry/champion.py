"""The current champion, read from the registry, in the shape the evaluate stage takes.

Promotion compares a candidate with the champion *on the same eval set*, so the flow re-evaluates the
champion model with the current data rather than trusting the metrics it was promoted with.
"""

from __future__ import annotations

from mlflow import MlflowClient

from tasks.core.config import PipelineConfig
from tasks.core.tags import TAG_PREFIX
from tasks.registry.versions import champion_version
from tasks.run.contract import StageResult


def current_champion(cfg: PipelineConfig) -> StageResult | None:
    """The version behind the champion alias, or None when nothing has been promoted yet."""
    name, alias = cfg.registry.policy_name, cfg.registry.champion_alias
    version = champion_version(MlflowClient(), name, alias)
    if version is None:
        return None
    model_key = version.tags.get(f"{TAG_PREFIX}cache_key") or f"{name}/{version.version}"
    return StageResult(
        stage="champion",
        run_id=version.run_id or "",
        cache_key=model_key,
        model_uri=f"models:/{name}/{version.version}",
        outputs={"name": name, "version": str(version.version)},
        output_hashes={"model": model_key},
    )


def unchanged_since_champion(cfg: PipelineConfig, data_md5: str, config_hash: str) -> str | None:
    """Why a retraining run would change nothing, or None when it may: the champion was trained on this very
    DVC data version with this very config. Data DVC cannot vouch for (modified, unverified, untracked) never
    counts as unchanged."""
    name, alias = cfg.registry.policy_name, cfg.registry.champion_alias
    version = champion_version(MlflowClient(), name, alias)
    if version is None:
        return None
    if "+" in data_md5 or data_md5 in ("untracked", "unknown"):
        return None
    champion_data = version.tags.get(f"{TAG_PREFIX}dvc_data_md5")
    champion_config = version.tags.get(f"{TAG_PREFIX}config_hash")
    if champion_data != data_md5 or champion_config != config_hash:
        return None
    return (f"nothing changed: champion {name} v{version.version} was trained on DVC data {data_md5} "
            f"with config {config_hash[:12]}")
