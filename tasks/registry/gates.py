"""The promotion gates as pure logic on evaluations: no MLflow, so they are easy to test and to read.

Thresholds are absolute bars on the point estimate or, with `estimate: lower_bound|upper_bound`, on the metric's
one-sided confidence bound at `gates.confidence` (Wilson for rates, Student t for means of per-prompt values).
`beat_baseline` compares with the SFT model and `champion` with the current champion, by a paired test on the
same eval prompts. A metric the candidate lacks fails its gate: a gate never passes silently.

Relative gates: `margin` is the *tolerated shortfall*. Per prompt, d = candidate - reference; with
higher_is_better the candidate passes when the one-sided lower confidence bound of mean(d) is at least -margin;
otherwise when the upper bound is at most +margin. So "not worse than" holds only when the test says so: with few
prompts an equal candidate fails. Without per-prompt values on both sides, on the same prompts, the gate fails.
All bounds are inclusive (a value exactly on the bound passes, up to float rounding).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from models.metrics import mean_bound, rate_bound
from tasks.core.config import ChampionGate, GatesSection, MetricGate
from tasks.core.tags import TRAINING_TRIPPED_METRIC

_REL_TOL = 1e-9  # a value on the bound passes even after float rounding (0.3 - 0.1 != 0.2)


@dataclass(frozen=True)
class PerPrompt:
    """The values a metric averages, one per eval prompt, in the eval's order."""

    prompts: tuple[str, ...]
    values: tuple[float, ...]
    binary: bool = False  # a rate: every value is 0 or 1, and its bounds are Wilson's


@dataclass(frozen=True)
class Evaluation:
    """One model's evaluation as the gates read it: its metrics and, per metric, its per-prompt values."""

    metrics: Mapping[str, float]
    per_prompt: Mapping[str, PerPrompt] = field(default_factory=dict)


@dataclass(frozen=True)
class GateResult:
    """One gate applied to one candidate. `bound` is the value the metric had to reach (inclusive)."""

    name: str  # e.g. threshold:eval/harmful_refusal_rate>=0.9, baseline:eval/reward_mean, champion:eval/…
    metric: str
    value: float | None
    bound: float | None
    passed: bool
    reason: str

    @property
    def key(self) -> str:
        """The gate's name in a form MLflow accepts as a metric/tag key (no `>=`), e.g. `threshold_min/eval/x`."""
        kind = self.name.split(":", 1)[0]
        if kind == "threshold":
            rest = self.name[len(f"threshold:{self.metric}"):]
            kind = "threshold_min" if rest.startswith(">=") else "threshold_max" if rest.startswith("<=") else kind
        return safe_key(f"{kind}/{self.metric}")

    def tag_value(self) -> str:
        """The decision, the value checked against the bound, and how it was reached (the test and its numbers)."""
        verdict = "pass" if self.passed else "fail"
        return f"{verdict} value={_fmt(self.value)} bound={_fmt(self.bound)} ({self.reason})"


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    gates: list[GateResult]

    @property
    def failed(self) -> list[GateResult]:
        return [gate for gate in self.gates if not gate.passed]

    def summary(self) -> str:
        """One line: which gates failed, with value and bound."""
        if not self.gates:
            return "pass: no gates configured"
        if self.passed:
            return f"pass: all {len(self.gates)} gates passed"
        failed = "; ".join(f"{g.name} (value={_fmt(g.value)}, bound={_fmt(g.bound)}: {g.reason})" for g in self.failed)
        return f"fail: {len(self.failed)} of {len(self.gates)} gates failed: {failed}"

    def headline(self) -> str:
        """Shorter, for a registry version's description: "failed harmful_refusal_rate 0 < min 0.9; …"."""
        if self.passed:
            return f"passed all {len(self.gates)} gates"
        return "failed " + "; ".join(f"{g.metric.removeprefix('eval/')} {g.reason}" for g in self.failed)


def decide(
    candidate: Evaluation | Mapping[str, float],
    *,
    gates: GatesSection,
    baseline: Evaluation | Mapping[str, float] | None,
    champion: Evaluation | Mapping[str, float] | None,
) -> GateDecision:
    """Apply every configured gate to a candidate's evaluation (a plain metric dict is one without per-prompt
    values).

    - thresholds: `value >= min` and/or `value <= max` (one gate per bound), the value being the point estimate
      or its confidence bound (`estimate`);
    - beat_baseline: a paired test says the candidate is not worse than the baseline (SFT) by more than `margin`;
      no baseline given → fail;
    - champion: the same against the champion; no champion → pass ("no champion yet");
    - always, for a candidate trained with reward-hacking monitors: none of them tripped.
    A metric missing (or NaN) in the candidate, or in the baseline/champion it is compared with, fails.
    """
    candidate, baseline, champion = (_evaluation(e) for e in (candidate, baseline, champion))
    results: list[GateResult] = []
    if TRAINING_TRIPPED_METRIC in candidate.metrics:
        tripped = _get(candidate.metrics, TRAINING_TRIPPED_METRIC)
        ok = tripped == 0.0
        reason = "no monitor tripped" if ok else "a reward-hacking monitor tripped during training"
        results.append(GateResult(f"monitors:{TRAINING_TRIPPED_METRIC}==0", TRAINING_TRIPPED_METRIC, tripped, 0.0,
                                  ok, reason))
    for gate in gates.thresholds:
        for op, bound in ((">=", gate.min), ("<=", gate.max)):  # MetricGate guarantees at least one bound
            if bound is not None:
                results.append(_threshold_gate(gate, op, bound, candidate, gates.confidence))
    # A missing baseline fails its gates; a missing champion passes them (there is nothing to fall behind yet).
    relative = (("baseline", gates.beat_baseline, baseline, False, "no baseline metrics given"),
                ("champion", gates.champion, champion, True, "no champion yet"))
    for kind, kind_gates, reference, passes_without, without_reason in relative:
        for gate in kind_gates:
            if reference is None:
                results.append(GateResult(f"{kind}:{gate.metric}", gate.metric,
                                          _get(candidate.metrics, gate.metric), None, passes_without, without_reason))
            else:
                results.append(_paired_gate(kind, gate, candidate, reference, gates.confidence))
    return GateDecision(passed=all(r.passed for r in results), gates=results)


def _evaluation(given: Evaluation | Mapping[str, float] | None) -> Evaluation | None:
    return given if given is None or isinstance(given, Evaluation) else Evaluation(metrics=given)


def _threshold_gate(gate: MetricGate, op: str, bound: float, candidate: Evaluation, confidence: float) -> GateResult:
    name = f"threshold:{gate.metric}{op}{_fmt(bound)}"
    point = _get(candidate.metrics, gate.metric)
    if point is None:
        return GateResult(name, gate.metric, None, bound, False, _missing(gate.metric, "candidate"))
    value, how = point, ""
    if gate.estimate != "point":
        side = gate.estimate.removesuffix("_bound")
        samples = candidate.per_prompt.get(gate.metric)
        if samples is None or len(samples.values) < 2:
            reason = f"{gate.metric} has no per-prompt values for its {side} confidence bound"
            return GateResult(name, gate.metric, None, bound, False, reason)
        value = _confidence_bound(samples, confidence, side)
        method = "Wilson" if samples.binary else "t"
        how = f" ({_percent(confidence)} {side} bound, {method}, of {_fmt(point)} on {len(samples.values)} prompts)"
    ok = _at_least(value, bound) if op == ">=" else _at_least(bound, value)
    reason = f"{_fmt(value)}{how} {op if ok else _negate(op)} {'min' if op == '>=' else 'max'} {_fmt(bound)}"
    return GateResult(name, gate.metric, value, bound, ok, reason)


def _confidence_bound(samples: PerPrompt, confidence: float, side: str) -> float:
    if samples.binary:
        return rate_bound(round(sum(samples.values)), len(samples.values), confidence, side)
    return mean_bound(torch.tensor(samples.values, dtype=torch.float64), confidence, side)


def _paired_gate(kind: str, gate: ChampionGate, candidate: Evaluation, reference: Evaluation,
                 confidence: float) -> GateResult:
    """Not worse than `reference` by more than the margin, by a paired t-test on the per-prompt values. The
    result's value is the confidence bound of the mean difference (candidate - reference), its bound -/+margin."""
    name = f"{kind}:{gate.metric}"
    bound = (-gate.margin if gate.higher_is_better else gate.margin) + 0.0  # + 0.0: no "-0" for a zero margin
    for whose, evaluation in (("candidate", candidate), (kind, reference)):
        if _get(evaluation.metrics, gate.metric) is None:
            return GateResult(name, gate.metric, None, bound, False, _missing(gate.metric, whose))
        samples = evaluation.per_prompt.get(gate.metric)
        if samples is None or len(samples.values) < 2:
            reason = f"{gate.metric} has no per-prompt values in the {whose}'s evaluation for a paired test"
            return GateResult(name, gate.metric, None, bound, False, reason)
    mine, theirs = candidate.per_prompt[gate.metric], reference.per_prompt[gate.metric]
    if mine.prompts != theirs.prompts:
        reason = f"{gate.metric} was not measured on the same prompts as the {kind}'s: no paired test"
        return GateResult(name, gate.metric, None, bound, False, reason)
    difference = torch.tensor(mine.values, dtype=torch.float64) - torch.tensor(theirs.values, dtype=torch.float64)
    side = "lower" if gate.higher_is_better else "upper"
    value = mean_bound(difference, confidence, side)
    ok = _at_least(value, bound) if gate.higher_is_better else _at_least(bound, value)
    op = (">=" if ok else "<") if gate.higher_is_better else ("<=" if ok else ">")
    reason = (f"paired t-test on {len(difference)} prompts: {_fmt(_get(candidate.metrics, gate.metric))} vs "
              f"{kind} {_fmt(_get(reference.metrics, gate.metric))}, mean difference {_fmt(difference.mean().item())}, "
              f"{_percent(confidence)} {side} bound {_fmt(value)} {op} {'-' if gate.higher_is_better else '+'}margin "
              f"{_fmt(gate.margin)}")
    return GateResult(name, gate.metric, value, bound, ok, reason)


def pick_best(
    candidates: list[tuple[str, Mapping[str, float], GateDecision]], rank_metric: str, higher_is_better: bool
) -> str | None:
    """The name of the best candidate that passed its gates, or None when none passed.

    Passing candidates are ordered by `rank_metric`; a passing candidate without that metric ranks after every
    one that has it; ties keep the order given (the first wins).
    """
    ranked: list[tuple[int, float, int, str]] = []
    for order, (name, metrics, decision) in enumerate(candidates):
        if not decision.passed:
            continue
        value = _get(metrics, rank_metric)
        if value is None:
            ranked.append((1, 0.0, order, name))
        else:
            ranked.append((0, -value if higher_is_better else value, order, name))
    return min(ranked)[3] if ranked else None


def _get(metrics: Mapping[str, float], name: str) -> float | None:
    value = metrics.get(name)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _at_least(value: float, bound: float) -> bool:
    return value >= bound or math.isclose(value, bound, rel_tol=_REL_TOL, abs_tol=1e-12)


def _negate(op: str) -> str:
    return {">=": "<", "<=": ">"}[op]


def _missing(metric: str, whose: str) -> str:
    return f"{metric} missing from the {whose}'s metrics"


def _percent(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def _fmt(value: float | None) -> str:
    return "missing" if value is None else f"{value:.6g}"


def safe_key(text: str) -> str:
    """MLflow metric/tag keys allow only [\\w.\\- /:] and a normalised path; replace anything else."""
    text = re.sub(r"[^\w.\- /:]", "_", text)
    return re.sub(r"/+", "/", text).strip("/") or "_"
