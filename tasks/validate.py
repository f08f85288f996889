"""Stage: validate every dataset with Great Expectations before anything reads it.

With a pretrained base, the stage counts token lengths with the base's tokenizer. A tiny model's tokenizer is
trained on the data, so the stage runs first, without the length checks, and the base-model stage checks token
lengths on the validated files once it has that tokenizer.

The report (JSON and HTML) and any quarantined rows are logged to MLflow, also when validation fails.
The validated files (the cleaned copies when rows were quarantined) are logged to MLflow too. Downstream
stages get them through `tasks.data.validated.validated_file`, so a stage on another worker needs no shared
disk. They key their caches on `output_hashes`.
"""

from __future__ import annotations

import mlflow

from models.loading import load_tokenizer
from models.prompting import prompt_formatter
from tasks.core.config import PipelineConfig
from tasks.core.errors import DataValidationError
from tasks.core.hashing import md5_file
from tasks.core.lineage import Lineage
from tasks.data.expectations import DATASET_KINDS, validate_files
from tasks.data.sampling import TRAIN_FILES, thin_file
from tasks.data.validated import dataset_artifact_dir
from tasks.registry.logged_models import resolve_model_source
from tasks.run.contract import StageResult, stage_key, stage_run, work_dir

STAGE = "validate"
SECTIONS = ("validation",)


def _input_hashes(cfg: PipelineConfig, base: StageResult | None) -> dict[str, str]:
    hashes = {name: md5_file(cfg.data.path(name)) for name in DATASET_KINDS if cfg.data.path(name).exists()}
    return hashes if base is None else {**hashes, "tokenizer": base.output_hashes["model"]}


def validate_key(cfg: PipelineConfig, base: StageResult | None = None) -> str:
    # The fraction keys only a thinned run's data, so the whole data's key is what it always was.
    fraction = {"train_fraction": repr(cfg.data.train_fraction)} if cfg.data.train_fraction < 1 else {}
    return stage_key(STAGE, cfg, SECTIONS, {**_input_hashes(cfg, base), **fraction}, code=__name__)


def run_validate(cfg: PipelineConfig, lineage: Lineage, *, base: StageResult | None = None) -> StageResult:
    """Validate the datasets; `base` (a pretrained base model) gives the tokenizer token lengths are counted with."""
    key = validate_key(cfg, base)
    stage_dir = work_dir(cfg, STAGE, key)
    parents = {"base": base.model_uri} if base is not None else {}
    with stage_run(STAGE, cfg, lineage, cache_key=key, sections=SECTIONS, parents=parents, code=__name__) as run:
        tokenizer = None if base is None else load_tokenizer(
            resolve_model_source(base.model_uri, stage_dir / "base"),
            revision=cfg.model.revision,
            trust_remote_code=cfg.model.trust_remote_code,
        )
        files = {name: cfg.data.path(name) for name in DATASET_KINDS}
        try:
            report = validate_files(
                files,
                tokenizer=tokenizer,
                format_prompt=prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template),
                max_length=cfg.validation.max_length,
                on_failure=cfg.validation.on_failure,
                max_quarantine_fraction=cfg.validation.max_quarantine_fraction,
                out_dir=stage_dir / "report",
            )
        except DataValidationError:
            _log_report(stage_dir / "report")
            raise
        _log_report(stage_dir / "report")
        metrics, served = {}, {}
        for file in report.files:
            metrics[f"validate/{file.name}/rows"] = float(file.rows)
            metrics[f"validate/{file.name}/quarantined"] = float(len(file.quarantined_rows))
            served[file.name] = file.clean_path
            if file.name in TRAIN_FILES and cfg.data.train_fraction < 1:  # a learning curve's point
                served[file.name] = stage_dir / "fraction" / f"{file.name}.jsonl"
                before, after = thin_file(file.clean_path, served[file.name], cfg.data.train_fraction)
                metrics[f"validate/{file.name}/rows"] = float(after)
                metrics[f"validate/{file.name}/rows_before_fraction"] = float(before)
            mlflow.log_artifact(str(served[file.name]), artifact_path=dataset_artifact_dir(file.name))
        mlflow.log_metrics(metrics)
    return StageResult(
        stage=STAGE,
        run_id=run.info.run_id,
        cache_key=key,
        metrics=metrics,
        outputs={name: str(path) for name, path in served.items()},
        output_hashes={name: md5_file(path) for name, path in served.items()},
        input_hashes=_input_hashes(cfg, base),
    )


def _log_report(report_dir) -> None:
    if report_dir.is_dir():
        mlflow.log_artifacts(str(report_dir), artifact_path="validation")
