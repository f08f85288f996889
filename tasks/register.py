"""Stage: register a trained policy in the MLflow model registry under the `candidate` alias.

The version carries the lineage of the run that trained it and the metrics of its evaluation as tags, so the
registry alone tells where a model came from and how it scored. Promotion to `champion` is a separate,
gated step.
"""

from __future__ import annotations

from mlflow import MlflowClient

from flows.config import PipelineConfig
from tasks.stage import TAG_PREFIX, Lineage, StageResult, stage_key
from tasks.tracking import register_version

STAGE = "register"
SECTIONS = ("registry",)


def register_key(cfg: PipelineConfig, policy: StageResult, evaluation: StageResult) -> str:
    return stage_key(STAGE, cfg, SECTIONS, {"policy": policy.cache_key, "evaluation": evaluation.cache_key})


def run_register(cfg: PipelineConfig, lineage: Lineage, *, policy: StageResult, evaluation: StageResult) -> StageResult:
    if policy.model_uri is None:
        raise ValueError(f"stage {policy.stage} produced no model to register")
    key = register_key(cfg, policy, evaluation)
    training_tags = MlflowClient().get_run(policy.run_id).data.tags
    tags = {k: v for k, v in training_tags.items() if k.startswith(TAG_PREFIX)}
    tags.update({f"{TAG_PREFIX}source_stage": policy.stage, f"{TAG_PREFIX}source_run_id": policy.run_id,
                 f"{TAG_PREFIX}eval_run_id": evaluation.run_id})
    tags.update({f"{TAG_PREFIX}{name}": f"{value:.6g}" for name, value in evaluation.metrics.items()})
    if lineage.flow_run_id:
        tags[f"{TAG_PREFIX}prefect_flow_run_id"] = lineage.flow_run_id
    version = register_version(policy.model_uri, cfg.registry.policy_name, cfg.registry.candidate_alias, tags)
    return StageResult(
        stage=f"{STAGE}-{policy.stage}",
        run_id=policy.run_id,
        cache_key=key,
        model_uri=f"models:/{cfg.registry.policy_name}/{version.version}",
        outputs={"name": cfg.registry.policy_name, "version": str(version.version)},
        input_hashes={"policy": policy.cache_key, "evaluation": evaluation.cache_key},
    )
