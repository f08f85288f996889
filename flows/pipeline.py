"""The Prefect flows. They only compose stage tasks, top to bottom."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import mlflow
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows.config import PipelineConfig, load_config
from flows.lineage import dvc_data_md5, git_sha
from tasks.cai_versioning import manifest_tags
from tasks.champion import current_champion
from tasks.expectations import TRAINING_FILES
from tasks.orchestration import (
    base_model_task,
    dpo_task,
    evaluate_task,
    ppo_task,
    promote_task,
    register_task,
    reward_task,
    sft_task,
    validate_task,
)
from tasks.stage import TAG_PREFIX, Lineage, StageResult
from tasks.tracking import configure_tracking


@flow(name="alignment_pipeline")
def alignment_pipeline(config_path: str, overrides: list[str] | None = None) -> dict[str, StageResult]:
    """Align a language model, one MLflow parent run per pipeline run.

    Steps:
    1. base_model: the pretrained model, or the tiny Llama built from config with its own tokenizer.
    2. validate: Great Expectations suites on every dataset; bad data stops here (or is quarantined).
    3. sft: supervised fine-tuning on the demonstrations.
    4. reward: a Bradley-Terry reward model on the preference pairs, from the SFT model.
    5. evaluate-sft: the baseline: perplexity, safety, reward and length of the SFT model; registered.
    6. evaluate-champion: the current champion on the same eval set, if there is one.
    7. for each optimizer in `optimizers`: train it (dpo: from preferences; ppo: against the reward model),
       evaluate it against the SFT baseline on the same eval, register it.
    8. promote: gate every candidate; the best one that passes becomes the champion.
    """
    cfg = load_config(config_path, overrides)
    configure_tracking(cfg)
    with pipeline_run(cfg) as lineage:
        results = {"base": run_stage(base_model_task, cfg, lineage)}
        results["data"] = data = run_stage(validate_task, cfg, lineage, base=results["base"])
        results["sft"] = sft = run_stage(sft_task, cfg, lineage, base=results["base"], data=data)
        results["reward"] = reward = run_stage(reward_task, cfg, lineage, sft=sft, data=data)
        judged = {"data": data, "reward": reward, "reference": sft}
        results["evaluate-sft"] = baseline = run_stage(evaluate_task, cfg, lineage, policy=sft, label="sft", **judged)
        results["register-sft"] = run_stage(register_task, cfg, lineage, policy=sft, evaluation=baseline)

        champion = champion_task(cfg)
        if champion is not None:
            results["evaluate-champion"] = run_stage(evaluate_task, cfg, lineage, policy=champion,
                                                     label="champion", baseline=baseline, **judged)
        optimizers = {"dpo": lambda: run_stage(dpo_task, cfg, lineage, sft=sft, data=data),
                      "ppo": lambda: run_stage(ppo_task, cfg, lineage, sft=sft, data=data, reward=reward)}
        candidates = {}
        for name in cfg.optimizers:
            results[name] = policy = optimizers[name]()
            results[f"evaluate-{name}"] = evaluation = run_stage(evaluate_task, cfg, lineage, policy=policy,
                                                                 label=name, baseline=baseline, **judged)
            results[f"register-{name}"] = registered = run_stage(register_task, cfg, lineage, policy=policy,
                                                                 evaluation=evaluation)
            candidates[name] = (registered, evaluation)
        results["promote"] = run_stage(promote_task, cfg, lineage,
                                       candidates=candidates or {"sft": (results["register-sft"], baseline)},
                                       baseline=baseline, champion=results.get("evaluate-champion"))
    return results


@flow(name="data_validation")
def data_validation(config_path: str, overrides: list[str] | None = None) -> StageResult:
    """Validate the datasets only.

    Steps:
    1. base_model: the tokenizer that token-length checks count with.
    2. validate: Great Expectations suites on every dataset.
    """
    cfg = load_config(config_path, overrides)
    configure_tracking(cfg)
    with pipeline_run(cfg, run_name=f"{cfg.name}-validation") as lineage:
        base = run_stage(base_model_task, cfg, lineage)
        return run_stage(validate_task, cfg, lineage, base=base)


@task(name="current_champion", retries=2, retry_delay_seconds=5)
def champion_task(cfg: PipelineConfig) -> StageResult | None:
    """Never cached: the registry may have changed since the last run."""
    return current_champion(cfg)


@contextmanager
def pipeline_run(cfg: PipelineConfig, run_name: str | None = None) -> Iterator[Lineage]:
    """The parent MLflow run: resolved config as params and artifact, lineage as tags."""
    lineage = Lineage(
        git_sha=git_sha(),
        config_hash=cfg.section_hash(),
        data_md5=dvc_data_md5(cfg.data.dir),
        flow_run_id=flow_run.get_id(),
        # Data made by the constitutional flow carries its constitution's hash into every model trained on it.
        data_tags=tuple(sorted(manifest_tags(cfg.data.path(name) for name in TRAINING_FILES).items())),
    )
    with mlflow.start_run(run_name=run_name or f"{cfg.name}-pipeline", tags=lineage.tags()) as run:
        mlflow.log_params(cfg.flat_params())
        mlflow.log_dict(cfg.model_dump(mode="json"), "config.yaml")
        get_run_logger().info("MLflow parent run %s (tracking URI %s)", run.info.run_id, mlflow.get_tracking_uri())
        yield replace(lineage, parent_run_id=run.info.run_id)


def run_stage(stage_task, cfg: PipelineConfig, lineage: Lineage, **inputs) -> StageResult:
    """Run one stage task; when Prefect serves it from cache, say so in the log and on the parent run."""
    state = stage_task(cfg, lineage, **inputs, return_state=True)
    result: StageResult = state.result()
    if state.name == "Cached" and not _run_exists(result.run_id):
        # The cache points at a run this tracking store no longer has: recompute rather than hand on a ghost.
        state = stage_task.with_options(refresh_cache=True)(cfg, lineage, **inputs, return_state=True)
        result = state.result()
    reused = state.name == "Cached"
    if reused:
        get_run_logger().info("Stage %s: inputs unchanged, reusing the cached result of run %s", result.stage,
                              result.run_id)
    mlflow.set_tag(f"{TAG_PREFIX}cache.{result.stage}", f"reused:{result.run_id}" if reused else "computed")
    mlflow.log_metrics(_parent_metrics(result))
    return result


def _parent_metrics(result: StageResult) -> dict[str, float]:
    """Stage metrics on the parent run; eval metrics get the model's label so candidates sit side by side."""
    if not result.stage.startswith("evaluate-"):
        return result.metrics
    label = result.stage.removeprefix("evaluate-")
    return {f"{label}/{name.removeprefix('eval/')}": value for name, value in result.metrics.items()}


def _run_exists(run_id: str) -> bool:
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True
