"""The current champion, read from the registry, in the shape the evaluate stage takes.

Promotion compares a candidate with the champion *on the same eval set*, so the flow re-evaluates the
champion model with the current data rather than trusting the metrics it was promoted with.
"""

from __future__ import annotations

import hashlib
import json

from mlflow import MlflowClient

from tasks.core.config import PipelineConfig
from tasks.core.tags import BASE_MODEL_TAG, TAG_PREFIX
from tasks.registry.versions import RegistryError, champion_version
from tasks.run.contract import StageResult


def base_model_identity(cfg: PipelineConfig) -> str:
    """What the pipeline's policies are trained from, as their registered versions record it: the pretrained
    source and revision (or the tiny model's shape) and the prompt format. A champion of another identity
    cannot be judged beside this pipeline's candidates: its tokenizer and prompt format are not theirs."""
    model = cfg.model
    fields = {"pretrained", "revision", "prompt_format", "prompt_template"} | ({"tiny"} if not model.pretrained
                                                                              else set())
    digest = hashlib.sha256(json.dumps(model.model_dump(mode="json", include=fields), sort_keys=True).encode())
    return f"{model.pretrained or 'tiny'} ({digest.hexdigest()[:12]})"


def current_champion(cfg: PipelineConfig) -> StageResult | None:
    """The version behind the champion alias, or None when nothing has been promoted yet. A champion trained
    from another base model is an error that names it: registered model names are per base model (a version
    registered before versions recorded their base is taken as this pipeline's)."""
    name, alias = cfg.registry.policy_name, cfg.registry.champion_alias
    version = champion_version(MlflowClient(), name, alias)
    if version is None:
        return None
    theirs, ours = version.tags.get(BASE_MODEL_TAG), base_model_identity(cfg)
    if theirs is not None and theirs != ours:
        raise RegistryError(
            f"the champion {name} v{version.version} was trained from base model {theirs}; this pipeline trains "
            f"{ours}. A candidate competes only with a champion of its own base model: give this pipeline its "
            f"own registry.policy_name (configs/pipelines/smollm2.yaml uses alignflow-policy-smollm2)")
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
