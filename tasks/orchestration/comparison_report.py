"""The comparison report of a pipeline run: its table, plots, training curves, six fixed prompts answered by every
method, and the data lineage, as one HTML page in `reports_dir` and on the parent MLflow run (`comparison/`)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

import mlflow

from models.saving import write_atomically
from tasks.core.config import PipelineConfig
from tasks.core.errors import AlignflowError
from tasks.core.lineage import Lineage
from tasks.core.tags import CONFIG_HASH_TAG, CONSTITUTION_TAG, DATA_MD5_TAG, GIT_SHA_TAG
from tasks.data.writers import write_text
from tasks.orchestration.comparison import ARTIFACT_DIR, COMPARISON, logged_rows
from tasks.report.figures import curves_png, summary_png
from tasks.report.page import render_report
from tasks.report.results import ResultRow, comparison_markdown
from tasks.run.contract import StageResult

# The curve each kind of training stage is judged by (a second one on a right axis).
CURVES = {"sft": ("sft/loss",), "reward": ("reward/train/loss",), "cost": ("cost/train/loss",), "dpo": ("dpo/loss",),
          "ppo": ("ppo/reward_mean", "ppo/kl"), "rloo": ("rloo/reward", "rloo/kl"),
          "safe_ppo": ("safe_ppo/reward_mean", "safe_ppo/lagrangian/lambda")}
PROMPT_KINDS = ("harmful", "sound_harmful", "benign")
PROMPTS_PER_KIND = 2


def log_comparison_report(cfg: PipelineConfig, lineage: Lineage, results: Mapping[str, StageResult],
                          rows: list[ResultRow]) -> Path:
    """Writes `<reports_dir>/<name>-comparison.html` (self-contained) and its summary plot as `.png` (for a
    README), and logs both on the active (parent) run. Returns the HTML's path."""
    client = mlflow.MlflowClient()
    trained = [name for name in dict.fromkeys(stage for row in rows for stage in row.stages)
               if name in results and results[name].run_id and results[name].stage in CURVES]
    curves = {name: {metric: [(m.step, m.value) for m in client.get_metric_history(results[name].run_id, metric)]
                     for metric in CURVES[results[name].stage]}
              for name in trained}
    generations = {row.method: _generations(results[f"evaluate-{row.method}"]) for row in rows}
    summary, training = summary_png(rows), curves_png(curves)
    page = render_report(title=f"{cfg.name}: the alignment methods compared", table_markdown=comparison_markdown(rows),
                         summary_png=summary, curves_png=training, answers=fixed_answers(generations),
                         lineage=_lineage(lineage, results))
    html_path = write_text(report_path(cfg), page)
    png_path = write_atomically(report_path(cfg).with_suffix(".png"), lambda partial: partial.write_bytes(summary))
    mlflow.log_artifact(str(html_path), ARTIFACT_DIR)
    mlflow.log_artifact(str(png_path), ARTIFACT_DIR)
    return html_path


def fixed_answers(generations: Mapping[str, list[dict]]) -> list[dict]:
    """The first two held-out prompts of each kind (the eval set's order is fixed), with every method's answer."""
    if not generations:
        return []
    first = next(iter(generations.values()))
    prompts = [row for kind in PROMPT_KINDS for row in [r for r in first if r.get("kind") == kind][:PROMPTS_PER_KIND]]
    by_method = {method: {row["prompt"]: row for row in rows} for method, rows in generations.items()}
    return [{"prompt": row["prompt"], "kind": row["kind"],
             "methods": {method: _answer(answers.get(row["prompt"])) for method, answers in by_method.items()}}
            for row in prompts]


def _answer(row: dict | None) -> dict | None:
    return None if row is None else {"response": row["response"].strip(), "refused": bool(row["refused"])}


def _generations(evaluation: StageResult) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(evaluation.outputs["generations"], dst_path=tmp)
        return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _lineage(lineage: Lineage, results: Mapping[str, StageResult]) -> dict[str, str]:
    data = results["data"].output_hashes
    cai = results["cai-version"].output_hashes if "cai-version" in results else {}  # CAI data made in this run
    made = {"CAI data (DVC md5)": cai["dvc_md5"], "constitution (sha256)": cai["constitution_sha256"]} if cai else {}
    return {"git commit": lineage.git_sha, "config hash": lineage.config_hash, "data (DVC md5)": lineage.data_md5,
            **{f"{name} (md5)": digest for name, digest in sorted(data.items()) if name != "dvc_md5"},
            **made, **dict(lineage.data_tags)}


def results_from_file(path: Path) -> dict[str, StageResult]:
    """The stage results `alignflow run --out` wrote, checked for what a comparison reads."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        results = {name: StageResult.model_validate(result) for name, result in raw.items()}
    except (OSError, ValueError, AttributeError) as err:
        raise AlignflowError(f"{path}: not the stage results `alignflow run --out` writes ({err})") from err
    missing = [name for name in ("data", "sft", "evaluate-sft", "promote") if name not in results]
    if missing:
        raise AlignflowError(f"{path}: no {', '.join(missing)} result; expected the JSON `alignflow run --out` "
                             "writes for a whole pipeline run")
    return results


def logged_comparison(cfg: PipelineConfig, results: Mapping[str, StageResult]) -> tuple[list[ResultRow], Path]:
    """The rows a finished run logged on its parent run, and where it wrote its report."""
    return logged_rows(results[COMPARISON].run_id), report_path(cfg)


def report_path(cfg: PipelineConfig) -> Path:
    return Path(cfg.reports_dir) / f"{cfg.name}-comparison.html"


def report_finished_run(cfg: PipelineConfig, results: Mapping[str, StageResult]) -> tuple[list[ResultRow], Path]:
    """The report of a pipeline run that has ended, from the rows it logged, written and logged on its parent run
    again."""
    parent_id = (results[COMPARISON].run_id if COMPARISON in results  # `alignflow compare --out` names it
                 else mlflow.get_run(results["promote"].run_id).data.tags["mlflow.parentRunId"])
    tags = mlflow.get_run(parent_id).data.tags
    lineage = Lineage(git_sha=tags.get(GIT_SHA_TAG, "unknown"), config_hash=tags.get(CONFIG_HASH_TAG, ""),
                      data_md5=tags.get(DATA_MD5_TAG, ""), parent_run_id=parent_id,
                      data_tags=tuple(sorted((k, v) for k, v in tags.items() if k == CONSTITUTION_TAG)))
    with mlflow.start_run(run_id=parent_id):
        rows = logged_rows(parent_id)
        return rows, log_comparison_report(cfg, lineage, results, rows)
