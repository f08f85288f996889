"""The seed's comparison, measured: one row per method (SFT and each optimizer) with the data it used, what it
cost, the stages it needed, and how it did on the shared held-out eval, every rate with its count and a 95%
Wilson interval. Logged on the pipeline's parent run as `comparison/comparison.{json,md}`.
"""

from __future__ import annotations

from collections.abc import Mapping

import mlflow

from models.metrics import wilson_interval
from tasks.orchestration.run_summary import format_value, gate_decision
from tasks.run.contract import StageResult

ARTIFACT_DIR = "comparison"
# The training stages each method needs after the base model ("complexity"); evaluation is the same for all.
METHOD_STAGES = {"sft": ("sft",), "dpo": ("sft", "dpo"), "ppo": ("sft", "reward", "ppo"),
                 "rloo": ("sft", "reward", "rloo")}
# (row key, eval prompt kind): the rate is eval/<kind>_refusal_rate over eval/<kind>_prompts prompts.
_RATES = (("harmful_refusal", "harmful"), ("benign_over_refusal", "benign"),
          ("sound_harmful_over_refusal", "sound_harmful"))


def comparison_rows(results: Mapping[str, StageResult], seconds: Mapping[str, float], *, demos: int,
                    pairs: int) -> list[dict]:
    """A row per evaluated method; `seconds[stage]` is the wall time of the run that computed that stage, `demos`
    the SFT demonstrations and `pairs` the preference pairs the optimizers trained on."""
    promote = results.get("promote")
    rows = []
    for method, stages in METHOD_STAGES.items():
        evaluation = results.get(f"evaluate-{method}")
        if evaluation is None:
            continue
        m = evaluation.metrics
        row = {"method": method, "stages": list(stages), "demos": demos,
               "preference_pairs": pairs if method != "sft" else 0,
               "wall_seconds": round(sum(seconds[s] for s in stages), 1) if set(stages) <= set(seconds) else None,
               "reward": m.get("eval/reward_mean"), "win_rate_vs_base": m.get("eval/win_rate_vs_base"),
               "win_rate_vs_sft": m.get("eval/win_rate_vs_sft"),
               "kl_to_sft": m.get("eval/kl_to_reference"),
               "ppl_ratio_vs_sft": m.get("eval/benign_perplexity_ratio_vs_sft"),
               "gates": gate_decision(method, promote)}
        for name, kind in _RATES:
            if m.get(f"eval/{kind}_prompts"):  # a kind the eval set has
                row[name] = _rate(m[f"eval/{kind}_refusal_rate"], int(m[f"eval/{kind}_prompts"]))
        rows.append(row)
    return rows


def comparison_markdown(rows: list[dict]) -> str:
    header = ["method", "stages", "demos", "preference pairs", "wall", "harmful refusal", "benign over-refusal",
              "sound-harmful over-refusal", "reward", "win rate vs base", "win rate vs SFT", "KL to SFT",
              "ppl ratio vs SFT", "gates"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"], " → ".join(row["stages"]), str(row["demos"]), str(row["preference_pairs"]),
                 _minutes(row["wall_seconds"]),
                 *(_rate_cell(row.get(name)) for name, _ in _RATES),
                 *(format_value(row[key]) for key in ("reward", "win_rate_vs_base", "win_rate_vs_sft", "kl_to_sft",
                                                   "ppl_ratio_vs_sft")),
                 row["gates"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nRates: value [95% Wilson interval] (prompts).\n"


def log_comparison(results: Mapping[str, StageResult], data: StageResult) -> list[dict]:
    """The comparison of this pipeline run, on the active (parent) run: demos counted in the SFT model's data
    (`results["data"]`), pairs in the optimizers' (`data`; a feedback round's own), stage times from their runs."""
    client = mlflow.MlflowClient()
    seconds = {}
    for stage in {s for stages in METHOD_STAGES.values() for s in stages}:
        if stage in results and results[stage].run_id:
            info = client.get_run(results[stage].run_id).info
            if info.end_time:
                seconds[stage] = (info.end_time - info.start_time) / 1000
    rows = comparison_rows(results, seconds, demos=_rows(results["data"], "sft_train"),
                           pairs=_rows(data, "preferences_train"))
    mlflow.log_dict(rows, f"{ARTIFACT_DIR}/comparison.json")
    mlflow.log_text(comparison_markdown(rows), f"{ARTIFACT_DIR}/comparison.md")
    return rows


def _rows(data: StageResult, name: str) -> int:
    return int(data.metrics.get(f"validate/{name}/rows", 0))


def _rate(value: float, prompts: int) -> dict:
    successes = round(value * prompts)
    return {"value": value, "n": prompts, "successes": successes, "ci95": list(wilson_interval(successes, prompts))}


def _rate_cell(rate: dict | None) -> str:
    if rate is None:
        return "-"
    low, high = rate["ci95"]
    return f"{rate['value']:.2f} [{low:.2f}, {high:.2f}] ({rate['n']})"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"
