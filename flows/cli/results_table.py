"""The before/after table `alignflow run` prints: every evaluated model side by side on the same held-out eval."""

from __future__ import annotations

import math

from tasks.run.contract import StageResult

# (column header, metric, format); a metric a run did not measure shows as "-".
COLUMNS = (
    ("harmful refusal", "eval/harmful_refusal_rate", "{:.2f}"),
    ("benign over-refusal", "eval/benign_refusal_rate", "{:.2f}"),
    ("sound-harmful over-refusal", "eval/sound_harmful_refusal_rate", "{:.2f}"),
    ("benign ppl", "eval/benign_perplexity", "{:.2f}"),
    ("ppl ratio vs base", "eval/benign_perplexity_ratio_vs_base", "{:.2f}"),
    ("degeneration", "eval/degeneration", "{:.3f}"),
    ("KL to SFT", "eval/kl_to_reference", "{:.1f}"),
    ("reward", "eval/reward_mean", "{:.2f}"),
    ("tokens", "eval/response_tokens", "{:.1f}"),
)
_COUNTS = (("harmful", "eval/harmful_prompts"), ("benign", "eval/benign_prompts"),
           ("sound-harmful", "eval/sound_harmful_prompts"))


def results_table(results: dict[str, StageResult]) -> str:
    """A Markdown table: one row per `evaluate-<label>` result, in pipeline order, and whether it was promoted."""
    evaluations = {name.removeprefix("evaluate-"): result for name, result in results.items()
                   if name.startswith("evaluate-")}
    if not evaluations:
        return ""
    promoted = results["promote"].outputs.get("promoted") if "promote" in results else None
    metric_columns = [(header, metric, fmt) for header, metric, fmt in COLUMNS
                      if any(metric in result.metrics for result in evaluations.values())]
    header = ["model", *(h for h, _, _ in metric_columns), "promoted"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, result in evaluations.items():
        cells = [label, *(_cell(result.metrics.get(metric), fmt) for _, metric, fmt in metric_columns),
                 "champion" if label == promoted else ""]
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(evaluations.values())).metrics
    counts = ", ".join(f"{int(first[metric])} {kind}" for kind, metric in _COUNTS if metric in first)
    if counts:
        lines.append(f"\nHeld-out prompts, greedy: {counts}.")
    return "\n".join(lines)


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)
