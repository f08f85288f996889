"""Stage: register a trained policy in the MLflow model registry under the `candidate` alias.

The version carries the lineage of the run that trained it and the metrics of its evaluation as tags, so the
registry alone tells where a model came from and how it scored. Promotion to `champion` is a separate,
gated step.
"""

from __future__ import annotations

from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.core.tags import BASE_MODEL_TAG
from tasks.registry.champion import base_model_identity
from tasks.registry.versions import register_version, version_tags
from tasks.run.contract import StageResult, stage_key

STAGE = "register"
SECTIONS = ("registry",)


def register_key(cfg: PipelineConfig, policy: StageResult, evaluation: StageResult, label: str | None = None) -> str:
    return stage_key(STAGE, cfg, SECTIONS, {"policy": policy.cache_key, "evaluation": evaluation.cache_key,
                                            "label": label or policy.stage}, code=__name__)


def run_register(cfg: PipelineConfig, lineage: Lineage, *, policy: StageResult, evaluation: StageResult,
                 label: str | None = None) -> StageResult:
    """`label` names the method when it is not the stage that trained the model (sl-cai: an sft stage)."""
    if policy.model_uri is None:
        raise ValueError(f"stage {policy.stage} produced no model to register")
    label = label or policy.stage
    key = register_key(cfg, policy, evaluation, label)
    tags = {**version_tags(label, policy.run_id, evaluation.metrics, lineage, eval_run_id=evaluation.run_id),
            BASE_MODEL_TAG: base_model_identity(cfg)}
    description = f"{label.upper()}: not gated yet (evaluated by run {evaluation.run_id})"
    version = register_version(policy.model_uri, cfg.registry.policy_name, cfg.registry.candidate_alias, tags,
                               description=description)
    return StageResult(
        stage=f"{STAGE}-{label}",
        run_id=policy.run_id,
        cache_key=key,
        model_uri=f"models:/{cfg.registry.policy_name}/{version.version}",
        outputs={"name": cfg.registry.policy_name, "version": str(version.version)},
        input_hashes={"policy": policy.cache_key, "evaluation": evaluation.cache_key},
    )
