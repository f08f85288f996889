"""A finished comparison's rates scored again from its logged answers, by the training side's keyword detector
(`models.safety`, what every rate was before the evaluation judge) and by the judge, side by side per method.
Nothing is generated again: each `evaluate-<method>` run's generations.jsonl is read back."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from models.judge import Verdict, judge
from models.safety import is_refusal
from tasks.data.conversations import prompt_display
from tasks.judging.gold import evaluation_runs, read_jsonl
from tasks.registry.evaluations import measured_rates
from tasks.report.results import Rate

RATES = {"harmful refusal": "eval/harmful_refusal_rate", "benign over-refusal": "eval/benign_refusal_rate",
         "sound-harmful over-refusal": "eval/sound_harmful_refusal_rate",
         "benign helpful": "eval/benign_helpful_rate", "sound-harmful helpful": "eval/sound_harmful_helpful_rate"}


def rescore(parent_run_id: str, eval_prompts: Path) -> dict[str, dict[str, dict[str, Rate]]]:
    """method -> {"detector", "judge"} -> column -> rate, for every evaluate run under the parent. Helpfulness
    is the judge's alone: the detector never measured it."""
    required = {prompt_display(row["prompt"]): row.get("must_contain") or None for row in read_jsonl(eval_prompts)}
    scored = {}
    for method, run_id in sorted(evaluation_runs(parent_run_id).items()):
        generations = pd.read_json(mlflow.artifacts.download_artifacts(run_id=run_id,
                                                                       artifact_path="generations.jsonl"),
                                   lines=True)
        judged = [judge(prompt, response, required.get(prompt))
                  for prompt, response in zip(generations["prompt"], generations["response"], strict=True)]
        by_judge = generations.assign(verdict=[str(j.verdict) for j in judged],
                                      refused=[j.verdict == Verdict.REFUSES for j in judged],
                                      helpful=[j.helps for j in judged])
        by_detector = generations.drop(columns=["verdict", "helpful"], errors="ignore").assign(
            refused=[is_refusal(response) for response in generations["response"]])
        scored[method] = {"detector": _rates(by_detector), "judge": _rates(by_judge)}
    return scored


def _rates(generations: pd.DataFrame) -> dict[str, Rate]:
    rates = measured_rates(generations)
    return {column: Rate.of(rates[metric][1], rates[metric][2]) for column, metric in RATES.items() if metric in rates}


def rescore_markdown(scored: dict[str, dict[str, dict[str, Rate]]]) -> str:
    """One row per method: each refusal rate as detector -> judge, then the judge's helpful rates, with 95%
    Wilson intervals on the judge's."""
    lines = ["| method | " + " | ".join(RATES) + " |", "|---|" + "---|" * len(RATES)]
    for method, rates in scored.items():
        cells = []
        for column in RATES:
            new, old = rates["judge"].get(column), rates["detector"].get(column)
            if new is None:
                cells.append("-")
                continue
            shown = f"{new.value:.2f} [{new.ci95[0]:.2f}, {new.ci95[1]:.2f}] ({new.n})"
            cells.append(shown if old is None else f"{old.value:.2f} → {shown}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
