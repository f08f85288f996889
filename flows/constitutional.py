"""The Constitutional AI flow: red-team prompts + a constitution -> new SFT and preference datasets (DVC)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import mlflow
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.cai_config import CAIConfig, load_cai_config
from flows.config import PipelineConfig, load_config
from flows.lineage import dvc_data_md5, git_sha
from flows.pipeline import run_stage
from flows.secrets import install_log_redaction
from tasks.cai_steps import CONSTITUTION_TAG, Inputs, model_sources
from tasks.cai_versioning import run_version
from tasks.constitutional import run_critique_revise, run_respond, run_sl_datasets
from tasks.orchestration import base_model_task, sft_task, validate_task
from tasks.rlaif import run_rlaif
from tasks.stage import Lineage, StageResult
from tasks.tracking import configure_tracking


def _cai_task(run, name: str):
    """No Prefect cache and no Prefect retries: progress files make a rerun resume, and the HTTP backend
    retries by itself (retrying the task on top would multiply the waits)."""
    return task(run, name=name, task_run_name=name, cache_policy=NO_CACHE)


respond_task = _cai_task(run_respond, "cai-respond")
critique_revise_task = _cai_task(run_critique_revise, "cai-critique_revise")
sl_datasets_task = _cai_task(run_sl_datasets, "cai-sl_datasets")
rlaif_task = _cai_task(run_rlaif, "cai-rlaif")
version_task = _cai_task(run_version, "cai-version")


@flow(name="constitutional_data")
def constitutional_data(config_path: str, overrides: list[str] | None = None) -> dict[str, StageResult]:
    """Critique-revision and AI-feedback datasets from red-team prompts and a constitution; one MLflow parent run.

    Steps:
    1. policy: `policy.model_uri`, or else the pipeline's base_model -> validate -> sft stages (cached as in the
       pipeline: an SFT model trained by `alignflow run` with the same config is reused).
    2. cai-respond: the helpful model answers every red-team prompt.
    3. cai-critique_revise: `critique.rounds` rounds; each draws a principle from the seed, critiques, revises.
    4. cai-sl_datasets: SFT (prompt, final revision) and preferences (final revision over the original).
    5. cai-rlaif: two sampled policy responses per prompt, labeled by the feedback model in both orders.
    6. cai-version: datasets + manifest into `output_dir`, `dvc add`, MLflow artifacts, md5 on the runs.
    """
    install_log_redaction()
    cai = load_cai_config(config_path, overrides)
    cfg = load_config(cai.pipeline_config, cai.pipeline_overrides)
    configure_tracking(cfg)
    inputs = Inputs(cai, cfg)  # a bad constitution, template or prompts file fails here, before any training
    with cai_run(cai, cfg, inputs) as lineage:
        results: dict[str, StageResult] = {}
        if cai.policy.kind == "local" and cai.policy.model_uri is None:
            results["base"] = base = run_stage(base_model_task, cfg, lineage)
            results["data"] = data = run_stage(validate_task, cfg, lineage, base=base)
            results["sft"] = run_stage(sft_task, cfg, lineage, base=base, data=data)
        step = {"cai": cai, "models": model_sources(cai, results.get("sft"))}
        results["respond"] = responses = run_stage(respond_task, cfg, lineage, **step)
        results["critique_revise"] = revisions = run_stage(critique_revise_task, cfg, lineage, responses=responses,
                                                           **step)
        results["sl_datasets"] = run_stage(sl_datasets_task, cfg, lineage, cai=cai, responses=responses,
                                           revisions=revisions)
        if cai.rlaif.enabled:
            results["rlaif"] = run_stage(rlaif_task, cfg, lineage, **step)
        datasets = [results[name] for name in ("sl_datasets", "rlaif") if name in results]
        results["version"] = run_stage(version_task, cfg, lineage, datasets=datasets, **step)
    return results


@contextmanager
def cai_run(cai: CAIConfig, cfg: PipelineConfig, inputs: Inputs) -> Iterator[Lineage]:
    """The parent MLflow run: both configs and the constitution as artifacts, lineage and constitution hash as tags."""
    lineage = Lineage(
        git_sha=git_sha(),
        config_hash=cai.section_hash(),
        data_md5=dvc_data_md5(cfg.data.dir),
        flow_run_id=flow_run.get_id(),
    )
    tags = {**lineage.tags(), CONSTITUTION_TAG: inputs.constitution_sha256}
    with mlflow.start_run(run_name=f"{cai.name}-cai", tags=tags) as run:
        mlflow.log_params(cai.flat_params())
        mlflow.log_dict(cai.redacted_dump(), "cai_config.yaml")
        mlflow.log_dict(cfg.redacted_dump(), "config.yaml")
        mlflow.log_artifact(str(cai.constitution), artifact_path="constitution")
        get_run_logger().info("MLflow parent run %s (tracking URI %s), constitution %s", run.info.run_id,
                              mlflow.get_tracking_uri(), inputs.constitution_sha256[:12])
        yield replace(lineage, parent_run_id=run.info.run_id)
