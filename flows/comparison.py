"""The comparison flow: every alignment method from the same base model, on the same held-out eval, in one parent
run. It only composes stages, top to bottom; the pipeline's and the constitutional flow's steps are reused."""

from __future__ import annotations

from dataclasses import replace

from prefect import flow

from flows.constitutional import constitutional_steps
from flows.pipeline import baseline_stages, refuse_early, train_and_promote
from tasks.base_model import needs_validated_data
from tasks.cai.config import CAIConfig
from tasks.cai.steps import CONSTITUTION_TAG, Inputs
from tasks.core import stage_names as stage
from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.core.secrets import install_log_redaction
from tasks.orchestration.cai_methods import cai_training_config, comparison_configs
from tasks.orchestration.parent_run import flow_lineage, parent_run
from tasks.orchestration.stage_tasks import run_stage
from tasks.report.results import Method
from tasks.run.contract import StageResult
from tasks.run.lifecycle import reap_dead_runs
from tasks.run.tracking import configure_tracking

Candidates = dict[str, tuple[StageResult, StageResult]]


@flow(name="method_comparison")
def method_comparison(config_path: str, overrides: list[str] | None = None) -> dict[str, StageResult]:
    """SFT, DPO, PPO, RLOO, Safe RLHF and (with `cai.config`) Constitutional AI, compared in one MLflow parent run.

    Steps:
    1-5. the pipeline's: validate, base_model, sft, reward, cost (with safe_ppo), evaluate-base (with `eval.base`),
       evaluate-sft.
    6. with `cai.config`: the constitutional flow's steps on this base model (cai-respond,
       cai-critique_revise, cai-sl_datasets, cai-rlaif, cai-version), the new data validated, then SL-CAI (sft on
       the revisions, from the base model) and RLAIF (dpo on the AI-labeled pairs, from SL-CAI); each evaluated
       like every other model (same eval, reward model, reference and baseline) and registered.
    7. the pipeline's: every optimizer of `optimizers`, evaluated and registered; the promotion gates every
       candidate, CAI's included; the parent run's description, the comparison table and its report.
    Unchanged stages come from the cache, the CAI steps from their progress files.
    """
    install_log_redaction()
    cfg, cai = comparison_configs(config_path, overrides)  # a bad CAI config fails here, before any training
    reap_dead_runs([configure_tracking(cfg)])
    refuse_early(cfg)
    lineage = flow_lineage(cfg.section_hash(), cfg)
    tags = {CONSTITUTION_TAG: Inputs(cai, cfg).constitution_sha256} if cai else {}
    configs = {"config.yaml": cfg, **({"cai_config.yaml": cai} if cai else {})}
    with parent_run(f"{cfg.name}-comparison", lineage, cfg, configs=configs, tags=tags) as lineage:
        results, judged = baseline_stages(cfg, lineage)
        candidates, methods = constitutional_methods(cfg, cai, lineage, results, judged) if cai else ({}, [])
        train_and_promote(cfg, lineage, results, judged, start=results["sft"], data=results["data"],
                          candidates=candidates, methods=methods)
    return results


def constitutional_methods(cfg: PipelineConfig, cai: CAIConfig, lineage: Lineage, results: dict[str, StageResult],
                           judged: dict[str, StageResult]) -> tuple[Candidates, list[Method]]:
    """Step 6: CAI's data, its two models, their evaluations and registrations; adds each result to `results`
    (`cai-<step>`, `cai-data`, `cai-sft`, `cai-dpo`, `evaluate-sl-cai`, …) and returns the two candidates and
    the methods their rows are built from."""
    local_stage = cai.policy.kind == "local" and cai.policy.model_uri is None
    steps = constitutional_steps(cai, cfg, lineage, results.get(cai.policy_stage) if local_stage else None)
    results.update({f"cai-{name}": result for name, result in steps.items()})
    train_cfg = cai_training_config(cfg, cai)
    # The CAI-trained runs carry the CAI data's lineage (its DVC md5 and constitution hash), as in `alignflow run`.
    trained = replace(lineage, data_tags=flow_lineage(lineage.config_hash, train_cfg).data_tags)
    validated = {} if needs_validated_data(cfg) else {"base": results["base"]}
    results["cai-data"] = data = run_stage(stage.VALIDATE, train_cfg, trained, **validated)
    results["cai-sft"] = sl_cai = run_stage(stage.SFT, train_cfg, trained, base=results["base"], data=data)
    results["cai-dpo"] = rlaif = run_stage(stage.DPO, train_cfg, trained, sft=sl_cai, data=data)
    # The human demos behind CAI's data are the SFT model's when that model made it; no human pairs either way.
    human = ("sft_train",) if local_stage and cai.policy_stage == "sft" else ()
    methods = [Method(label="sl-cai", stages=("cai-data", "cai-sft"), human_data=human, ai_data=("sft_train",),
                      ai_source="cai-data", about="Constitutional AI: SFT on its revisions"),
               Method(label="rlaif-dpo", stages=("cai-data", "cai-sft", "cai-dpo"), human_data=human,
                      ai_data=("sft_train", "preferences_train"), ai_source="cai-data",
                      about="Constitutional AI: DPO on its AI labels")]
    candidates: Candidates = {}
    for method, policy in (("sl-cai", sl_cai), ("rlaif-dpo", rlaif)):
        results[f"evaluate-{method}"] = evaluation = run_stage(stage.EVALUATE, cfg, lineage, policy=policy,
                                                               label=method, baseline=results["evaluate-sft"],
                                                               **judged)
        results[f"register-{method}"] = registered = run_stage(stage.REGISTER, cfg, lineage, policy=policy,
                                                               evaluation=evaluation, label=method)
        candidates[method] = (registered, evaluation)
    return candidates, methods
