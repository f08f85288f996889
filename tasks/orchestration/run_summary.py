"""The parent run's description (MLflow's run note): what the pipeline trained, how each model did, what the
gates decided, and where to look next. The MLflow UI shows it at the top of the run page."""

from __future__ import annotations

import mlflow

from tasks.core.config import PipelineConfig
from tasks.report.results import ResultRow, summary_table
from tasks.run.contract import StageResult

NOTE_TAG = "mlflow.note.content"  # the run page's "Description"
_WHERE_TO_LOOK = ("Each model's answers, side by side: on this experiment's runs page, expand this run and pick the "
                  "third view (after the table and the charts), the evaluation view of the `generations.json` "
                  "table of each `evaluate-<method>` run. Their metrics are here as `<method>/…`; group or colour "
                  "runs by the `method` param. The methods compared, with plots, curves and "
                  "answers: `comparison/` in this run's artifacts (`<name>-comparison.html`).")


def pipeline_description(cfg: PipelineConfig, rows: list[ResultRow], promote: StageResult | None) -> str:
    """Markdown: the outcome first, then the run's table (`tasks.report.results`), then where to look next."""
    promoted = promote.outputs.get("promoted") if promote else ""
    outcome = (f"Promoted: **{promoted}** (version {promote.outputs.get('version')})." if promoted
               else "Promoted: nothing; the champion stays as it was.")
    candidates = ", ".join(f"{row.method} ({row.about})" if row.about else row.method
                           for row in rows if row.role == "candidate") or "no candidate"
    count = sum(rate.n for name in ("harmful_refusal", "benign_over_refusal", "sound_harmful_over_refusal")
                if rows and (rate := getattr(rows[-1], name)) is not None)
    # The outcome leads: the run page shows a description's first lines and folds the rest under "Show more".
    headline = (f"**{cfg.name}**: {candidates}, each judged on the same {count} held-out prompts (greedy) against "
                f"the SFT baseline. {outcome}")
    return "\n".join([headline, "", summary_table(rows), "", _WHERE_TO_LOOK])


def describe_parent_run(cfg: PipelineConfig, rows: list[ResultRow], promote: StageResult | None) -> None:
    mlflow.set_tag(NOTE_TAG, pipeline_description(cfg, rows, promote))
