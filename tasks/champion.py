"""The current champion, read from the registry, in the shape the evaluate stage takes.

Promotion compares a candidate with the champion *on the same eval set*, so the flow re-evaluates the
champion model with the current data rather than trusting the metrics it was promoted with.
"""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from flows.config import PipelineConfig
from tasks.stage import TAG_PREFIX, StageResult


def current_champion(cfg: PipelineConfig) -> StageResult | None:
    """The version behind the champion alias, or None when nothing has been promoted yet."""
    name, alias = cfg.registry.policy_name, cfg.registry.champion_alias
    try:
        version = MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
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
