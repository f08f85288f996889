"""The comparison report's plots, as PNG bytes: what each method refused (with 95% intervals), reward against
KL, and each training stage's curve. Pure: rows (`tasks.report.results`) and curves in, images out."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no screen on a worker

import matplotlib.pyplot as plt

from tasks.report.results import ResultRow

RATES = (("harmful_refusal", "harmful refusal (higher is better)"),
         ("benign_over_refusal", "benign over-refusal"),
         ("sound_harmful_over_refusal", "sound-harmful over-refusal"))


def summary_png(rows: list[ResultRow]) -> bytes:
    """Left: each method's refusal rates as bars with their Wilson intervals. Right: reward against KL."""
    figure, (bars, scatter) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    rates = [(key, label) for key, label in RATES if any(getattr(row, key) for row in rows)]
    width = 0.8 / max(len(rates), 1)
    for i, (key, label) in enumerate(rates):
        measured = [(m, getattr(row, key)) for m, row in enumerate(rows) if getattr(row, key) is not None]
        xs = [m + (i - (len(rates) - 1) / 2) * width for m, _ in measured]
        errors = [[rate.value - rate.ci95[0] for _, rate in measured],
                  [rate.ci95[1] - rate.value for _, rate in measured]]
        bars.bar(xs, [rate.value for _, rate in measured], width, yerr=errors, capsize=3, label=label)
    bars.set_xticks(range(len(rows)), [row.method for row in rows])
    bars.set_ylim(0, 1.05)
    bars.set_ylabel("share of held-out prompts")
    bars.set_title("Refusal and over-refusal (95% Wilson intervals)")
    bars.legend(fontsize=8, loc="upper left")
    for row in rows:
        if row.reward is not None and row.kl_to_sft is not None:
            scatter.scatter(row.kl_to_sft, row.reward, s=40)
            scatter.annotate(row.method, (row.kl_to_sft, row.reward), textcoords="offset points", xytext=(5, 5))
    scatter.set_xlabel("KL to the SFT model (nats per answer)")
    scatter.set_ylabel("reward-model score")
    scatter.set_title("Reward against KL")
    return _png(figure)


def learning_curve_png(points: list[tuple[float, ResultRow]]) -> bytes:
    """One panel per rate: each method's rate against the fraction of training data, with its Wilson interval;
    the untrained base model as a dashed line."""
    panels = [*RATES, ("benign_helpful", "benign helpful (higher is better)")]
    panels = [(key, label) for key, label in panels if any(getattr(row, key) for _, row in points)]
    figure, axes = plt.subplots(1, max(len(panels), 1), figsize=(4 * max(len(panels), 1), 3.4), squeeze=False)
    methods = list(dict.fromkeys(row.method for _, row in points if row.role != "before"))
    for axis, (key, label) in zip(axes[0], panels, strict=False):
        for fraction, row in points:
            if row.role == "before" and getattr(row, key) is not None:
                axis.axhline(getattr(row, key).value, linestyle="--", color="grey", label=row.method)
        for method in methods:
            measured = [(fraction, getattr(row, key)) for fraction, row in points
                        if row.method == method and getattr(row, key) is not None]
            errors = [[rate.value - rate.ci95[0] for _, rate in measured],
                      [rate.ci95[1] - rate.value for _, rate in measured]]
            axis.errorbar([100 * fraction for fraction, _ in measured], [rate.value for _, rate in measured],
                          yerr=errors, marker="o", capsize=3, label=method)
        axis.set_xlabel("training data (%)")
        axis.set_ylim(0, 1.05)
        axis.set_title(label, fontsize=9)
    axes[0][0].set_ylabel("share of held-out prompts")
    axes[0][0].legend(fontsize=8)
    return _png(figure)


def curves_png(curves: dict[str, dict[str, list[tuple[int, float]]]]) -> bytes:
    """One panel per training stage: each of its metrics over the steps (a second metric on a right axis)."""
    stages = [stage for stage, metrics in curves.items() if any(metrics.values())]
    columns = min(3, max(len(stages), 1))
    rows = (len(stages) + columns - 1) // columns or 1
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, stage in zip(axes.flat, stages, strict=False):
        for n, (metric, points) in enumerate(curves[stage].items()):
            target = axis if n == 0 else axis.twinx()
            colour = f"C{n}"
            target.plot([s for s, _ in points], [v for _, v in points], color=colour, label=metric)
            target.set_ylabel(metric, color=colour, fontsize=8)
        axis.set_title(stage)
        axis.set_xlabel("step")
    for axis in list(axes.flat)[len(stages):]:
        axis.set_visible(False)
    return _png(figure)


def _png(figure) -> bytes:
    try:
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()
    finally:
        plt.close(figure)
