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
from flows.secrets import install_log_redaction, redact_mapping, strip_credentials
from tasks.cai_versioning import manifest_tags
from tasks.champion import current_champion, unchanged_since_champion
from tasks.dispatch import check_dispatchable
from tasks.expectations import TRAINING_FILES
from tasks.orchestration import (
    base_model_task,
    dpo_task,
    evaluate_task,
    placed,
    ppo_task,
    promote_task,
    promotion_lock,
    register_task,
    reward_task,
    sft_task,
    validate_task,
)
from tasks.stage import TAG_PREFIX, Lineage, StageResult
from tasks.tracking import configure_tracking


@flow(name="alignment_pipeline")
def alignment_pipeline(config_path: str, overrides: list[str] | None = None,
                       skip_if_unchanged: bool = False) -> dict[str, StageResult]:
    """Align a language model, one MLflow parent run per pipeline run.

    Steps:
    0. with skip_if_unchanged (scheduled runs): stop with "nothing changed" when the champion was trained on
       this DVC data version with this config.
    1. base_model: the pretrained model, or the tiny Llama built from config with its own tokenizer.
    2. validate: Great Expectations suites on every dataset; bad data stops here (or is quarantined).
    3. sft: supervised fine-tuning on the demonstrations.
    4. reward: a Bradley-Terry reward model on the preference pairs, from the SFT model.
    5. evaluate-sft: the baseline: perplexity, safety, reward and length of the SFT model; registered.
    6. for each optimizer in `optimizers`: train it (dpo: from preferences; ppo: against the reward model),
       evaluate it against the SFT baseline on the same eval, register it.
    7. under the registry's promotion lock: evaluate the current champion (if any) on the same eval, then
       promote: gate every candidate; the best one that passes becomes the champion.
    Stages listed in `dispatch.pools` run as deployments on those work pools' workers.
    """
    install_log_redaction()
    cfg = load_config(config_path, overrides)
    configure_tracking(cfg)
    check_dispatchable(cfg)
    lineage = pipeline_lineage(cfg)
    if skip_if_unchanged:
        unchanged = unchanged_task(cfg, lineage)
        if unchanged is not None:
            get_run_logger().info(unchanged)
            return {}
    with pipeline_run(cfg, lineage) as lineage:
        results = {"base": run_stage(base_model_task, cfg, lineage)}
        results["data"] = data = run_stage(validate_task, cfg, lineage, base=results["base"])
        results["sft"] = sft = run_stage(sft_task, cfg, lineage, base=results["base"], data=data)
        results["reward"] = reward = run_stage(reward_task, cfg, lineage, sft=sft, data=data)
        judged = {"data": data, "reward": reward, "reference": sft}
        results["evaluate-sft"] = baseline = run_stage(evaluate_task, cfg, lineage, policy=sft, label="sft", **judged)
        results["register-sft"] = run_stage(register_task, cfg, lineage, policy=sft, evaluation=baseline)

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

        with promotion_lock(cfg):  # the champion read here is still the champion when the gates decide
            champion = champion_task(cfg)
            if champion is not None:
                results["evaluate-champion"] = run_stage(evaluate_task, cfg, lineage, policy=champion,
                                                         label="champion", baseline=baseline, **judged)
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
    install_log_redaction()
    cfg = load_config(config_path, overrides)
    configure_tracking(cfg)
    with pipeline_run(cfg, pipeline_lineage(cfg), run_name=f"{cfg.name}-validation") as lineage:
        base = run_stage(base_model_task, cfg, lineage)
        return run_stage(validate_task, cfg, lineage, base=base)


@task(name="current_champion", retries=2, retry_delay_seconds=5)
def champion_task(cfg: PipelineConfig) -> StageResult | None:
    """Never cached: the registry may have changed since the last run."""
    return current_champion(cfg)


@task(name="unchanged_since_champion", retries=2, retry_delay_seconds=5)
def unchanged_task(cfg: PipelineConfig, lineage: Lineage) -> str | None:
    """Never cached: the registry may have changed since the last run."""
    return unchanged_since_champion(cfg, lineage.data_md5, lineage.config_hash)


def pipeline_lineage(cfg: PipelineConfig) -> Lineage:
    """Where this run comes from: code, config, data (and the data's own tags), and the Prefect flow run."""
    return Lineage(
        git_sha=git_sha(),
        config_hash=cfg.section_hash(),
        data_md5=dvc_data_md5(cfg.data.dir),
        flow_run_id=flow_run.get_id(),
        # Data made by the constitutional flow carries its constitution's hash into every model trained on it.
        data_tags=tuple(sorted(manifest_tags(cfg.data.path(name) for name in TRAINING_FILES).items())),
    )


@contextmanager
def pipeline_run(cfg: PipelineConfig, lineage: Lineage, run_name: str | None = None) -> Iterator[Lineage]:
    """The parent MLflow run: resolved config (credentials masked) as params and artifact, lineage as tags."""
    with mlflow.start_run(run_name=run_name or f"{cfg.name}-pipeline", tags=redact_mapping(lineage.tags())) as run:
        mlflow.log_params(cfg.flat_params())
        mlflow.log_dict(cfg.redacted_dump(), "config.yaml")
        get_run_logger().info("MLflow parent run %s (tracking URI %s)", run.info.run_id,
                              strip_credentials(mlflow.get_tracking_uri()))
        yield replace(lineage, parent_run_id=run.info.run_id)


def run_stage(stage_task, cfg: PipelineConfig, lineage: Lineage, **inputs) -> StageResult:
    """Run one stage task, here or on its work pool; when Prefect serves it from cache, say so in the log and
    on the parent run."""
    stage_task = placed(stage_task, cfg)
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
