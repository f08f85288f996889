"""The results of a pipeline run, measured and logged once: the rows of `tasks.report.results` with each method's
stage times and generated tokens from their runs, on the parent run as `comparison/comparison.{json,md}` and as
its description (`tasks.orchestration.run_summary`)."""

from __future__ import annotations

from collections.abc import Mapping

import mlflow
from mlflow.exceptions import MlflowException

from tasks.core.config import PipelineConfig
from tasks.core.errors import AlignflowError
from tasks.orchestration.run_summary import describe_parent_run
from tasks.report.results import Method, ResultRow, build_rows, comparison_markdown
from tasks.run.contract import StageResult

ARTIFACT_DIR = "comparison"
COMPARISON = "comparison"  # the result naming the parent run that holds a run's rows
CAI_DATA = "cai-data"  # the stage that validated CAI's data: its cost is that of the CAI steps that made it
_CAI_DATA_STEPS = ("respond", "critique_revise", "sl_datasets", "rlaif", "version")


def log_results(cfg: PipelineConfig, results: Mapping[str, StageResult], methods: list[Method],
                data: StageResult) -> list[ResultRow]:
    """The rows of this run (`measured_rows`), on the active (parent) run."""
    rows = measured_rows(results, methods, data)
    mlflow.log_dict([row.model_dump(mode="json") for row in rows], f"{ARTIFACT_DIR}/comparison.json")
    mlflow.log_text(comparison_markdown(rows), f"{ARTIFACT_DIR}/comparison.md")
    describe_parent_run(cfg, rows, results.get("promote"))
    return rows


def measured_rows(results: Mapping[str, StageResult], methods: list[Method], data: StageResult) -> list[ResultRow]:
    """The rows of these results: demos counted in the SFT model's data (`results["data"]`), pairs in the
    optimizers' (`data`; a feedback round's own), stage times and tokens from their runs. The CAI data's time,
    tokens and principles: from its steps' runs (`cai-<step>` results)."""
    client = mlflow.MlflowClient()
    seconds: dict[str, float | None] = {}
    tokens: dict[str, float | None] = {}
    for name in {stage for method in methods for stage in method.stages}:
        if name in results and results[name].run_id:
            seconds[name] = _seconds(client.get_run(results[name].run_id))
            # Tokens sampled while training (the eval's are the same for every method, so left out).
            tokens[name] = results[name].metrics.get(f"{results[name].stage}/generated_tokens", 0.0)
    steps = [results[f"cai-{step}"] for step in _CAI_DATA_STEPS if f"cai-{step}" in results]
    cai_metrics = {name: value for step in steps for name, value in step.metrics.items()}
    if steps:  # the steps' runs, and the validation of what they made
        step_seconds = [*(_seconds(client.get_run(step.run_id)) for step in steps), seconds.get(CAI_DATA)]
        seconds[CAI_DATA] = None if None in step_seconds else sum(step_seconds)
        tokens[CAI_DATA] = _cai_tokens(cai_metrics)
    if cai_metrics.get("cai/responses_resumed") or cai_metrics.get("cai/revisions_resumed"):
        # Records an earlier run generated: their cost was that run's, so this run's time and tokens are not it.
        seconds[CAI_DATA] = tokens[CAI_DATA] = None
    principles = cai_metrics.get("cai_data/principles")
    human_rows = {"sft_train": _rows(results["data"], "sft_train"),
                  "preferences_train": _rows(data, "preferences_train")}
    return build_rows(methods, results, human_rows=human_rows, seconds=seconds, tokens=tokens,
                      principles=None if principles is None else int(principles))


def logged_rows(parent_run_id: str) -> list[ResultRow]:
    """The rows a run logged on its parent run."""
    uri = f"runs:/{parent_run_id}/{ARTIFACT_DIR}/comparison.json"
    try:
        return [ResultRow.model_validate(row) for row in mlflow.artifacts.load_dict(uri)]
    except (OSError, ValueError, MlflowException) as err:
        raise AlignflowError(f"{uri}: not the results table this version logs ({err})") from err


def _cai_tokens(metrics: Mapping[str, float]) -> float | None:
    """The CAI data steps' generated tokens; None when its answering or revising step did not count them."""
    counted = {name.split("/")[1]: value for name, value in metrics.items()
               if name.startswith("cai/") and name.endswith("/generated_tokens")}
    return float(sum(counted.values())) if {"respond", "critique_revise"} <= set(counted) else None


def _seconds(run) -> float | None:
    return (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None


def _rows(data: StageResult, name: str) -> int:
    return int(data.metrics.get(f"validate/{name}/rows", 0))
