"""The parent run's description (MLflow's run note): what the pipeline trained, how each model did, what the
gates decided, and where to look next. The MLflow UI shows it at the top of the run page."""

from __future__ import annotations

import math
from collections.abc import Mapping

import mlflow

from tasks.core.config import PipelineConfig
from tasks.run.contract import StageResult

NOTE_TAG = "mlflow.note.content"  # the run page's "Description"
_COLUMNS = (("harmful refusal", "eval/harmful_refusal_rate"), ("benign over-refusal", "eval/benign_refusal_rate"),
            ("sound-harmful over-refusal", "eval/sound_harmful_refusal_rate"), ("reward", "eval/reward_mean"),
            ("KL to SFT", "eval/kl_to_reference"), ("ppl ratio vs SFT", "eval/benign_perplexity_ratio_vs_sft"))
_WHERE_TO_LOOK = ("Each model's answers, side by side: on this experiment's runs page, expand this run and pick the "
                  "third view (after the table and the charts), the evaluation view of the `generations.json` "
                  "table of each `evaluate-<method>` run. Their metrics are here as `<method>/…`; group or colour "
                  "runs by the `method` param. The methods compared, with plots, curves and "
                  "answers: `comparison/` in this run's artifacts (`<name>-comparison.html`).")


def pipeline_description(cfg: PipelineConfig, results: Mapping[str, StageResult]) -> str:
    """Markdown: one row per evaluated model (base, SFT, each optimizer), its gate decision, the promotion."""
    promote = results.get("promote")
    # sl-cai and rlaif-dpo: Constitutional AI's models in `alignflow compare` (tasks.orchestration.comparison)
    labels = [label for label in ("base", "sft", *cfg.optimizers, "sl-cai", "rlaif-dpo")
              if f"evaluate-{label}" in results]
    prompts = results[f"evaluate-{labels[-1]}"].metrics if labels else {}
    count = sum(int(prompts.get(f"eval/{kind}_prompts", 0)) for kind in ("harmful", "benign", "sound_harmful"))
    optimizers = ", ".join(o.upper() for o in cfg.optimizers) or "no optimizer"
    promoted = promote.outputs.get("promoted") if promote else ""
    outcome = (f"Promoted: **{promoted}** (version {promote.outputs.get('version')})." if promoted
               else "Promoted: nothing; the champion stays as it was.")
    # The outcome leads: the run page shows a description's first lines and folds the rest under "Show more".
    cai = (", and Constitutional AI (SL-CAI and RLAIF on data the model made from a constitution)"
           if "evaluate-sl-cai" in results else "")
    headline = (f"**{cfg.name}**: SFT and a reward model, then {optimizers}{cai}, each judged on the same {count} "
                f"held-out prompts (greedy) against the SFT baseline. {outcome}")
    lines = [headline, ""]
    header = ["model", *(name for name, _ in _COLUMNS), "gates"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in labels:
        metrics = results[f"evaluate-{label}"].metrics
        cells = [label, *(format_value(metrics.get(metric)) for _, metric in _COLUMNS), gate_decision(label, promote)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _WHERE_TO_LOOK]
    return "\n".join(lines)


def describe_parent_run(cfg: PipelineConfig, results: Mapping[str, StageResult]) -> None:
    mlflow.set_tag(NOTE_TAG, pipeline_description(cfg, results))


def gate_decision(label: str, promote: StageResult | None) -> str:
    if label == "base":
        return "-"
    if label == "sft":
        return "baseline"
    passed = promote.metrics.get(f"gate/{label}/passed") if promote else None
    if passed is None:
        return "not gated"
    return "promoted" if promote.outputs.get("promoted") == label else "passed" if passed else "failed"


def format_value(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"
