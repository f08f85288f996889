"""A learning curve's results, logged once: each method's row at each fraction of the training data, as
`learning_curve/learning_curve.{json,md,png}` on the parent run and `<reports_dir>/<name>-learning-curve.{md,png}`."""

from __future__ import annotations

from pathlib import Path

import mlflow

from models.saving import write_atomically
from tasks.core.config import PipelineConfig
from tasks.data.writers import write_text
from tasks.report.figures import learning_curve_png
from tasks.report.results import ResultRow, curve_markdown

ARTIFACT_DIR = "learning_curve"


def log_learning_curve(cfg: PipelineConfig, points: list[tuple[float, ResultRow]]) -> Path:
    """Writes the curve's table and plot beside the comparison reports and logs them with the points on the
    active (parent) run. Returns the table's path."""
    stem = Path(cfg.reports_dir) / f"{cfg.name}-learning-curve"
    table = write_text(stem.with_suffix(".md"), f"# {cfg.name}: learning curve\n\n{curve_markdown(points)}")
    plot = learning_curve_png(points)
    figure = write_atomically(stem.with_suffix(".png"), lambda partial: partial.write_bytes(plot))
    mlflow.log_dict([{"fraction": fraction, **row.model_dump(mode="json")} for fraction, row in points],
                    f"{ARTIFACT_DIR}/learning_curve.json")
    mlflow.log_artifact(str(table), ARTIFACT_DIR)
    mlflow.log_artifact(str(figure), ARTIFACT_DIR)
    return table
