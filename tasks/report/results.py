"""The results of a pipeline run: one typed row per evaluated model, built once, and every way it is shown.

A flow declares what it evaluated as `Method`s (a label, its role, the training stages behind it, the data it
learnt from); `build_rows` turns them and the stage results into `ResultRow`s. The CLI's table after
`alignflow run`, the parent run's description, `comparison.{json,md}`, the HTML report and the iterate summary
all render that one list, through the one column registry below. Nothing here knows a method by name. Pure: no
MLflow (`tasks.orchestration.comparison` measures the stage times and logs the rows).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict

from models.metrics import wilson_interval
from tasks.run.contract import StageResult

Role = Literal["before", "baseline", "candidate", "champion"]


class Method(BaseModel):
    """What a flow trained and evaluated as `evaluate-<label>`: everything its row says besides the metrics."""

    model_config = ConfigDict(frozen=True)

    label: str
    role: Role = "candidate"  # before: the untrained base; baseline: SFT; champion: the registry's, re-evaluated
    stages: tuple[str, ...] = ()  # the results of its training stages after the base model, in order
    human_data: tuple[str, ...] = ()  # validated datasets of human data behind it: sft_train, preferences_train
    ai_data: tuple[str, ...] = ()  # datasets of AI-made data behind it, counted by `ai_source`'s validation
    ai_source: str | None = None  # the result that validated the AI-made data
    about: str = ""  # what it is, for a reader who does not know the label


class Rate(BaseModel):
    """A rate over `n` prompts with its 95% Wilson interval."""

    value: float
    n: int
    successes: int
    ci95: tuple[float, float]

    @classmethod
    def of(cls, value: float, prompts: int) -> Rate:
        successes = round(value * prompts)
        return cls(value=value, n=prompts, successes=successes, ci95=wilson_interval(successes, prompts))


class ResultRow(BaseModel):
    """One evaluated model on the shared held-out eval: its data, its cost, its rates and the gates' decision."""

    method: str
    role: Role
    about: str = ""
    stages: list[str]
    demos: int | None  # human demonstrations behind it (None: not known, the champion's)
    preference_pairs: int | None
    principles: int | None  # the constitution's, behind AI-made data
    ai_data: str | None
    wall_seconds: float | None  # of its training stages, as they were computed
    generated_tokens: float | None  # sampled while training or making data
    harmful_refusal: Rate | None = None
    benign_over_refusal: Rate | None = None
    sound_harmful_over_refusal: Rate | None = None
    benign_helpful: Rate | None = None  # the evaluation judge's, where the prompts say what helping takes
    sound_harmful_helpful: Rate | None = None
    reward: float | None = None
    win_rate_vs_base: float | None = None
    win_rate_vs_sft: float | None = None
    kl_to_sft: float | None = None
    benign_ppl: float | None = None
    ppl_ratio_vs_base: float | None = None
    ppl_ratio_vs_sft: float | None = None
    degeneration: float | None = None
    response_tokens: float | None = None
    gates: str


# (row field, eval prompt kind): the rate is eval/<kind>_refusal_rate over eval/<kind>_prompts prompts.
RATES = (("harmful_refusal", "harmful"), ("benign_over_refusal", "benign"),
         ("sound_harmful_over_refusal", "sound_harmful"))
# (row field, eval prompt kind): the rate is eval/<kind>_helpful_rate over eval/<kind>_helpful_prompts prompts.
HELPFUL_RATES = (("benign_helpful", "benign"), ("sound_harmful_helpful", "sound_harmful"))
# Row fields read straight from the evaluation's metrics.
_EVAL_METRICS = {"reward": "eval/reward_mean", "win_rate_vs_base": "eval/win_rate_vs_base",
                 "win_rate_vs_sft": "eval/win_rate_vs_sft", "kl_to_sft": "eval/kl_to_reference",
                 "benign_ppl": "eval/benign_perplexity", "ppl_ratio_vs_base": "eval/benign_perplexity_ratio_vs_base",
                 "ppl_ratio_vs_sft": "eval/benign_perplexity_ratio_vs_sft", "degeneration": "eval/degeneration",
                 "response_tokens": "eval/response_tokens"}


def build_rows(methods: list[Method], results: Mapping[str, StageResult], *, human_rows: Mapping[str, int],
               seconds: Mapping[str, float | None] | None = None, tokens: Mapping[str, float | None] | None = None,
               principles: int | None = None) -> list[ResultRow]:
    """A row per method whose evaluation is in `results`, in the order declared. `human_rows[dataset]` counts the
    human data (`sft_train` demos, `preferences_train` pairs), `seconds[stage]` is the wall time of the run that
    computed a stage and `tokens[stage]` the tokens it generated (a stage missing from either: unknown)."""
    seconds, tokens = seconds or {}, tokens or {}
    promote = results.get("promote")
    rows = []
    for method in methods:
        evaluation = results.get(f"evaluate-{method.label}")
        if evaluation is None:
            continue
        m = evaluation.metrics
        row = {name: _number(m.get(metric)) for name, metric in _EVAL_METRICS.items()}
        for name, kind in RATES:
            if m.get(f"eval/{kind}_prompts"):  # a kind the eval set has
                row[name] = Rate.of(m[f"eval/{kind}_refusal_rate"], int(m[f"eval/{kind}_prompts"]))
        for name, kind in HELPFUL_RATES:
            if m.get(f"eval/{kind}_helpful_prompts"):  # prompts that say what helping takes
                row[name] = Rate.of(m[f"eval/{kind}_helpful_rate"], int(m[f"eval/{kind}_helpful_prompts"]))
        known = method.role != "champion"  # the champion's data and cost were another run's
        rows.append(ResultRow(
            method=method.label, role=method.role, about=method.about, stages=list(method.stages),
            demos=(human_rows.get("sft_train", 0) if "sft_train" in method.human_data else 0) if known else None,
            preference_pairs=((human_rows.get("preferences_train", 0) if "preferences_train" in method.human_data
                               else 0) if known else None),
            principles=(principles if method.ai_data else 0) if known else None,
            ai_data=_ai_data(results, method),
            wall_seconds=_total(seconds, method.stages) if known else None,
            generated_tokens=_total(tokens, method.stages) if known else None,
            gates=gate_decision(method, promote), **row))
    return rows


def gate_decision(method: Method, promote: StageResult | None) -> str:
    if method.role == "before":
        return "-"
    if method.role == "baseline":
        return "baseline"
    if method.role == "champion":
        return "champion"
    passed = promote.metrics.get(f"gate/{method.label}/passed") if promote else None
    if passed is None:
        return "not gated"
    return "promoted" if promote.outputs.get("promoted") == method.label else "passed" if passed else "failed"


def _ai_data(results: Mapping[str, StageResult], method: Method) -> str | None:
    source = results.get(method.ai_source) if method.ai_source else None
    if source is None:
        return None
    names = {"sft_train": "demos", "preferences_train": "AI-labeled pairs"}
    return ", ".join(f"{int(source.metrics.get(f'validate/{d}/rows', 0))} {names.get(d, d)}" for d in method.ai_data)


def _total(values: Mapping[str, float | None], stages: tuple[str, ...]) -> float | None:
    known = [values.get(stage) for stage in stages]
    return None if None in known else round(float(sum(known)), 1)


def _number(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


# The one column registry: header -> how a row's cell reads. Each view picks its columns from it.
def _rate_cell(rate: Rate | None, *, interval: bool) -> str:
    if rate is None:
        return "-"
    if not interval:
        return f"{rate.value:.2f}"
    low, high = rate.ci95
    return f"{rate.value:.2f} [{low:.2f}, {high:.2f}] ({rate.n})"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


COLUMNS = {
    "method": lambda r, i: r.method,
    "stages": lambda r, i: " → ".join(r.stages) or "-",
    "demos": lambda r, i: _count(r.demos),
    "preference pairs": lambda r, i: _count(r.preference_pairs),
    "principles": lambda r, i: _count(r.principles),
    "AI-made data": lambda r, i: r.ai_data or "-",
    "wall": lambda r, i: _minutes(r.wall_seconds),
    "generated tokens": lambda r, i: _count(r.generated_tokens),
    "harmful refusal": lambda r, i: _rate_cell(r.harmful_refusal, interval=i),
    "benign over-refusal": lambda r, i: _rate_cell(r.benign_over_refusal, interval=i),
    "sound-harmful over-refusal": lambda r, i: _rate_cell(r.sound_harmful_over_refusal, interval=i),
    "benign helpful": lambda r, i: _rate_cell(r.benign_helpful, interval=i),
    "sound-harmful helpful": lambda r, i: _rate_cell(r.sound_harmful_helpful, interval=i),
    "reward": lambda r, i: _fmt(r.reward, ".2f"),
    "win rate vs base": lambda r, i: _fmt(r.win_rate_vs_base, ".2f"),
    "win rate vs SFT": lambda r, i: _fmt(r.win_rate_vs_sft, ".2f"),
    "KL to SFT": lambda r, i: _fmt(r.kl_to_sft, ".1f"),
    "benign ppl": lambda r, i: _fmt(r.benign_ppl, ".2f"),
    "ppl ratio vs base": lambda r, i: _fmt(r.ppl_ratio_vs_base, ".2f"),
    "ppl ratio vs SFT": lambda r, i: _fmt(r.ppl_ratio_vs_sft, ".2f"),
    "degeneration": lambda r, i: _fmt(r.degeneration, ".3f"),
    "tokens": lambda r, i: _fmt(r.response_tokens, ".1f"),
    "gates": lambda r, i: r.gates,
}
# The views. The comparison (comparison.md, the report) shows every column, rates with intervals; the run's summary
# (the CLI after `alignflow run`, the parent run's description) the rates and quality that were measured; the
# iterate line the essentials.
COMPARISON_VIEW = ("method", "stages", "demos", "preference pairs", "principles", "AI-made data", "wall",
                   "generated tokens", "harmful refusal", "benign over-refusal", "sound-harmful over-refusal",
                   "benign helpful", "sound-harmful helpful", "reward", "win rate vs base", "win rate vs SFT",
                   "KL to SFT", "ppl ratio vs SFT", "gates")
SUMMARY_VIEW = ("method", "harmful refusal", "benign over-refusal", "sound-harmful over-refusal", "benign helpful",
                "sound-harmful helpful", "reward", "KL to SFT", "benign ppl", "ppl ratio vs base", "ppl ratio vs SFT",
                "degeneration", "tokens", "gates")
CURVE_VIEW = ("method", "demos", "preference pairs", "wall", "harmful refusal", "benign over-refusal",
              "sound-harmful over-refusal", "benign helpful", "sound-harmful helpful")
ROUND_VIEW = ("harmful refusal", "benign over-refusal", "benign helpful", "reward", "KL to SFT", "gates")
_COMPARISON_NOTE = ("Rates: value [95% Wilson interval] (prompts). Helpful: the evaluation judge's, on the prompts "
                    "that say what a helpful answer must contain. Demos, pairs and principles are human-made data. "
                    "Generated tokens: sampled while training or making data (PPO and RLOO rollouts, CAI's answers, "
                    "critiques, revisions and samples), not in evaluation.")

_CURVE_NOTE = ("Rates: value [95% Wilson interval] (prompts), on the same whole held-out eval at every fraction. "
               "Demos and pairs: the training rows each model learnt from (the fraction of each request kind and "
               "sub-category). Wall: its training stages.")


def markdown_table(rows: list[ResultRow], view: tuple[str, ...], *, intervals: bool = False,
                   drop_empty: bool = False) -> str:
    """The rows as a Markdown table of the view's columns (with `drop_empty`, less those no row has a value in)."""
    columns = [c for c in view if not drop_empty or c in ("method", "gates")
               or any(COLUMNS[c](r, intervals) != "-" for r in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(COLUMNS[c](row, intervals) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def comparison_markdown(rows: list[ResultRow]) -> str:
    return markdown_table(rows, COMPARISON_VIEW, intervals=True) + f"\n\n{_COMPARISON_NOTE}\n"


def curve_markdown(points: list[tuple[float, ResultRow]]) -> str:
    """A learning curve: each method at each fraction of the training data (`method @ 25%`), rates with intervals;
    the untrained base model once, as it is the same at every fraction."""
    rows = [row if row.role == "before" else row.model_copy(update={"method": f"{row.method} @ {fraction:.0%}"})
            for fraction, row in points]
    return markdown_table(rows, CURVE_VIEW, intervals=True) + f"\n\n{_CURVE_NOTE}\n"


def summary_table(rows: list[ResultRow]) -> str:
    """The run's table (the CLI, the parent run's description), with the held-out prompt counts under it."""
    if not rows:
        return ""
    counts = [f"{rate.n} {kind.replace('_', '-')}" for (name, kind) in RATES
              if (rate := getattr(rows[0], name)) is not None]
    held_out = f"\n\nHeld-out prompts, greedy: {', '.join(counts)}." if counts else ""
    return markdown_table(rows, SUMMARY_VIEW, drop_empty=True) + held_out


def round_line(rows: list[ResultRow]) -> str:
    """A feedback round's rows on one line: `dpo: harmful refusal 0.90, …; ppo: …`."""
    return " ".join(f"{row.method}: " + ", ".join(f"{c} {COLUMNS[c](row, False)}" for c in ROUND_VIEW) + ";"
                    for row in rows if row.role != "champion")
