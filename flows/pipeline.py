"""The `alignment_pipeline` Prefect flow: it only composes stage tasks, top to bottom."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import mlflow
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.config import PipelineConfig, load_config
from flows.lineage import dvc_data_md5, git_sha
from tasks.orchestration import base_model_task, evaluate_task, register_task, sft_task, validate_task
from tasks.stage import TAG_PREFIX, Lineage, StageResult
from tasks.tracking import configure_tracking


@flow(name="alignment_pipeline")
def alignment_pipeline(config_path: str, overrides: list[str] | None = None) -> dict[str, StageResult]:
    """Align a language model, one MLflow parent run per pipeline run.

    Steps:
    1. base_model: the pretrained model, or the tiny Llama built from config with its own tokenizer.
    2. validate: Great Expectations suites on every dataset; bad data stops here (or is quarantined).
    3. sft: supervised fine-tuning on the demonstrations.
    4. evaluate-sft: perplexity and safety metrics of the SFT model on held-out prompts.
    5. register: the SFT model becomes a version of the policy model with alias `candidate`.
    """
    cfg = load_config(config_path, overrides)
    configure_tracking(cfg)
    with pipeline_run(cfg) as lineage:
        base = run_stage(base_model_task, cfg, lineage)
        data = run_stage(validate_task, cfg, lineage, base=base)
        sft = run_stage(sft_task, cfg, lineage, base=base, data=data)
        sft_eval = run_stage(evaluate_task, cfg, lineage, policy=sft, data=data, label="sft")
        registered = run_stage(register_task, cfg, lineage, policy=sft, evaluation=sft_eval)
    return {"base": base, "data": data, "sft": sft, "evaluate-sft": sft_eval, "register": registered}


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


@contextmanager
def pipeline_run(cfg: PipelineConfig, run_name: str | None = None) -> Iterator[Lineage]:
    """The parent MLflow run: resolved config as params and artifact, lineage as tags."""
    lineage = Lineage(
        git_sha=git_sha(),
        config_hash=cfg.section_hash(),
        data_md5=dvc_data_md5(cfg.data.dir),
        flow_run_id=flow_run.get_id(),
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
    for name, value in result.metrics.items():
        mlflow.log_metric(name, value)
    return result


def _run_exists(run_id: str) -> bool:
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True
