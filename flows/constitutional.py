"""The Constitutional AI flow: red-team prompts + a constitution -> new SFT and preference datasets (DVC).

It only composes steps, top to bottom; the steps live in `tasks.cai`.
"""

from __future__ import annotations

from prefect import flow

from flows.pipeline import base_and_data
from tasks.cai.config import CAIConfig
from tasks.cai.steps import CONSTITUTION_TAG, Inputs, model_sources
from tasks.core import stage_names as stage
from tasks.core.config import PipelineConfig
from tasks.core.errors import ConfigError
from tasks.core.lineage import Lineage
from tasks.core.secrets import install_log_redaction
from tasks.orchestration.cai_methods import comparison_configs
from tasks.orchestration.parent_run import flow_lineage, parent_run
from tasks.orchestration.stage_tasks import CAI_TASKS, run_stage
from tasks.run.contract import StageResult
from tasks.run.tracking import configure_tracking


@flow(name="constitutional_data")
def constitutional_data(config_path: str, overrides: list[str] | None = None) -> dict[str, StageResult]:
    """Critique-revision and AI-feedback datasets from red-team prompts and a constitution; one MLflow parent run.
    `config_path` is the pipeline config; its `cai.config` names the CAI config.

    Steps:
    1. policy: `policy.model_uri`, or else the pipeline's validate, base_model and (`policy_stage: sft`) sft
       stages (cached as in the pipeline: an SFT model trained by `alignflow run` with the same config is reused).
    2. cai-respond: the helpful model answers every red-team prompt (and the helpful prompts, if any).
    3. cai-critique_revise: `critique.rounds` rounds; each draws a principle from the seed, critiques, revises.
    4. cai-sl_datasets: SFT (prompt, final revision) and preferences (final revision over the original).
    5. cai-rlaif: two sampled policy responses per prompt, labeled by the feedback model in both orders.
    6. cai-version: datasets + manifest into `output_dir`, `dvc add`, MLflow artifacts, md5 on the runs.
    """
    install_log_redaction()
    cfg, cai = comparison_configs(config_path, overrides)
    if cai is None:
        raise ConfigError(f"{config_path}: no cai.config: name the CAI config whose data to make")
    configure_tracking(cfg)
    inputs = Inputs(cai, cfg)  # a bad constitution, template or prompts file fails here, before any training
    lineage = flow_lineage(cai.section_hash(), cfg)
    with parent_run(f"{cai.name}-cai", lineage, cai, configs={"cai_config.yaml": cai, "config.yaml": cfg},
                    files={"constitution": cai.constitution},
                    tags={CONSTITUTION_TAG: inputs.constitution_sha256}) as lineage:
        results: dict[str, StageResult] = {}
        if cai.policy.kind == "local" and cai.policy.model_uri is None:
            results.update(base_and_data(cfg, lineage))
            if cai.policy_stage == "sft":
                results["sft"] = run_stage(stage.SFT, cfg, lineage, base=results["base"], data=results["data"])
        results.update(constitutional_steps(cai, cfg, lineage, results.get(cai.policy_stage)))
    return results


def constitutional_steps(cai: CAIConfig, cfg: PipelineConfig, lineage: Lineage,
                         policy: StageResult | None) -> dict[str, StageResult]:
    """Steps 2-6 on the active parent run, with `policy` the pipeline stage that answers (None: the configured
    model); also run inside `alignflow compare`."""
    step = {"cai": cai, "models": model_sources(cai, policy)}
    results = {"respond": run_stage(CAI_TASKS["respond"], cfg, lineage, **step)}
    results["critique_revise"] = revisions = run_stage(CAI_TASKS["critique_revise"], cfg, lineage,
                                                       responses=results["respond"], **step)
    results["sl_datasets"] = run_stage(CAI_TASKS["sl_datasets"], cfg, lineage, cai=cai, responses=results["respond"],
                                       revisions=revisions)
    if cai.rlaif.enabled:
        results["rlaif"] = run_stage(CAI_TASKS["rlaif"], cfg, lineage, responses=results["respond"],
                                     revisions=revisions, **step)
    datasets = [results[name] for name in ("sl_datasets", "rlaif") if name in results]
    results["version"] = run_stage(CAI_TASKS["version"], cfg, lineage, datasets=datasets, **step)
    return results
