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
COMPARISON = "comparison"  # the result naming a comparison's parent run (`flows.comparison`)
# The training stages each method needs after the base model ("complexity"); evaluation is the same for all.
METHOD_STAGES = {"sft": ("sft",), "dpo": ("sft", "dpo"), "ppo": ("sft", "reward", "ppo"),
                 "rloo": ("sft", "reward", "rloo")}
# Constitutional AI's rows: SL-CAI is SFT on the CAI data from the same base model, RLAIF DPO from it on the AI
# labels, both trained inside the comparison (`flows.comparison`) and judged on the same eval. `cai-data` is the
# CAI steps that made the data (respond, critique, revise, label).
CAI_METHODS = {"sl-cai": ("cai-data", "cai-sft"), "rlaif-dpo": ("cai-data", "cai-sft", "cai-dpo")}
# Tokens sampled while training or making data (the eval's generation is the same for every method, so left out).
# Stages not named here generate nothing; a CAI data flow's are its steps' `cai/<step>/generated_tokens`.
_GENERATED_TOKENS = {"ppo": "ppo/generated_tokens", "rloo": "rloo/generated_tokens"}
_CAI_DATA_STEPS = ("respond", "critique_revise", "sl_datasets", "rlaif", "version")
# (row key, eval prompt kind): the rate is eval/<kind>_refusal_rate over eval/<kind>_prompts prompts.
_RATES = (("harmful_refusal", "harmful"), ("benign_over_refusal", "benign"),
          ("sound_harmful_over_refusal", "sound_harmful"))


def comparison_rows(results: Mapping[str, StageResult], seconds: Mapping[str, float], *, demos: int,
                    pairs: int, principles: int | None = None,
                    tokens: Mapping[str, float | None] | None = None) -> list[dict]:
    """A row per evaluated method; `seconds[stage]` is the wall time of the run that computed that stage and
    `tokens[stage]` the tokens it generated, `demos` the SFT demonstrations and `pairs` the preference pairs the
    optimizers trained on, `principles` the constitution's behind the CAI rows. CAI rows used no human pairs and no
    human demos (unless the model that made their data was the SFT model); their data is AI-made, counted apart."""
    promote = results.get("promote")
    cai_demos = demos if _cai_policy(results).startswith("stage:sft:") else 0
    rows = []
    for method, stages in {**METHOD_STAGES, **CAI_METHODS}.items():
        evaluation = results.get(f"evaluate-{method}")
        if evaluation is None:
            continue
        m = evaluation.metrics
        cai = method in CAI_METHODS
        row = {"method": method, "stages": list(stages), "demos": cai_demos if cai else demos,
               "preference_pairs": 0 if cai or method == "sft" else pairs,
               "principles": principles if cai else 0,
               "ai_data": _ai_data(results.get("cai-data"), method) if cai else None,
               "wall_seconds": round(sum(seconds[s] for s in stages), 1) if set(stages) <= set(seconds) else None,
               "generated_tokens": _sum_known(tokens or {}, stages),
               "reward": m.get("eval/reward_mean"),
               "win_rate_vs_base": m.get("eval/win_rate_vs_base"),
               "win_rate_vs_sft": m.get("eval/win_rate_vs_sft"),
               "kl_to_sft": m.get("eval/kl_to_reference"),
               "ppl_ratio_vs_sft": m.get("eval/benign_perplexity_ratio_vs_sft"),
               "gates": gate_decision(method, promote)}
        for name, kind in _RATES:
            if m.get(f"eval/{kind}_prompts"):  # a kind the eval set has
                row[name] = _rate(m[f"eval/{kind}_refusal_rate"], int(m[f"eval/{kind}_prompts"]))
        rows.append(row)
    return rows


def _sum_known(values: Mapping[str, float | None], stages: tuple[str, ...]) -> float | None:
    known = [values.get(stage) for stage in stages]
    return None if None in known else float(sum(known))


def _cai_policy(results: Mapping[str, StageResult]) -> str:
    """The model that made the CAI data (`stage:base:…`, `stage:sft:…`, a URI); '' when not known."""
    version = results.get("cai-version")
    return version.outputs.get("policy", "") if version is not None else ""


def _ai_data(data: StageResult | None, method: str) -> str | None:
    if data is None:
        return None
    made = f"{_rows(data, 'sft_train')} demos"
    return made + (f", {_rows(data, 'preferences_train')} AI-labeled pairs" if method == "rlaif-dpo" else "")


def comparison_markdown(rows: list[dict]) -> str:
    header = ["method", "stages", "demos", "preference pairs", "principles", "AI-made data", "wall",
              "generated tokens",
              "harmful refusal", "benign over-refusal", "sound-harmful over-refusal", "reward", "win rate vs base",
              "win rate vs SFT", "KL to SFT", "ppl ratio vs SFT", "gates"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"], " → ".join(row["stages"]), str(row["demos"]), str(row["preference_pairs"]),
                 "-" if row.get("principles") is None else str(row["principles"]), row.get("ai_data") or "-",
                 _minutes(row["wall_seconds"]), _count(row.get("generated_tokens")),
                 *(_rate_cell(row.get(name)) for name, _ in _RATES),
                 *(format_value(row[key]) for key in ("reward", "win_rate_vs_base", "win_rate_vs_sft", "kl_to_sft",
                                                   "ppl_ratio_vs_sft")),
                 row["gates"]]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Rates: value [95% Wilson interval] (prompts). Demos, pairs and principles are human-made data. "
            "Generated tokens: sampled while training or making data (PPO and RLOO rollouts, CAI's answers, "
            "critiques, revisions and samples), not in evaluation.")
    return "\n".join(lines) + f"\n\n{note}\n"


def log_comparison(results: Mapping[str, StageResult], data: StageResult) -> list[dict]:
    """The comparison of this pipeline run, on the active (parent) run: demos counted in the SFT model's data
    (`results["data"]`), pairs in the optimizers' (`data`; a feedback round's own), stage times from their runs.
    The CAI data's time, tokens and principles: from its steps' runs (`cai-<step>` results)."""
    client = mlflow.MlflowClient()
    seconds, tokens = {}, {}
    for stage in {s for stages in {**METHOD_STAGES, **CAI_METHODS}.values() for s in stages}:
        if stage in results and results[stage].run_id:
            seconds[stage] = _seconds(client.get_run(results[stage].run_id))
            tokens[stage] = results[stage].metrics.get(_GENERATED_TOKENS[stage]) if stage in _GENERATED_TOKENS else 0.0
    steps = [results[f"cai-{step}"] for step in _CAI_DATA_STEPS if f"cai-{step}" in results]
    cai_metrics = {name: value for step in steps for name, value in step.metrics.items()}
    if steps:  # the steps' runs, and the validation of what they made
        step_seconds = [*(_seconds(client.get_run(step.run_id)) for step in steps), seconds.get("cai-data")]
        seconds["cai-data"] = None if None in step_seconds else sum(step_seconds)
    tokens["cai-data"] = _cai_tokens(cai_metrics)
    if cai_metrics.get("cai/responses_resumed") or cai_metrics.get("cai/revisions_resumed"):
        # Records an earlier run generated: their cost was that run's, so this run's time and tokens are not it.
        seconds.pop("cai-data", None)
        tokens["cai-data"] = None
    principles = cai_metrics.get("cai_data/principles")
    rows = comparison_rows(results, {k: v for k, v in seconds.items() if v is not None},
                           demos=_rows(results["data"], "sft_train"), pairs=_rows(data, "preferences_train"),
                           principles=None if principles is None else int(principles), tokens=tokens)
    mlflow.log_dict(rows, f"{ARTIFACT_DIR}/comparison.json")
    mlflow.log_text(comparison_markdown(rows), f"{ARTIFACT_DIR}/comparison.md")
    return rows


def _cai_tokens(metrics: Mapping[str, float]) -> float | None:
    """The CAI data flow's generated tokens; None when its answering or revising step did not count them."""
    counted = {name.split("/")[1]: value for name, value in metrics.items()
               if name.startswith("cai/") and name.endswith("/generated_tokens")}
    return float(sum(counted.values())) if {"respond", "critique_revise"} <= set(counted) else None


def _seconds(run) -> float | None:
    return (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None


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


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"
