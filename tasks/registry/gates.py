"""The promotion gates as pure logic on plain metric dicts: no MLflow, so they are easy to test and to read.

Thresholds are absolute bars; `beat_baseline` compares with the SFT model; `champion` with the current champion
on the same eval set. A metric the candidate lacks fails its gate: a gate never passes silently.

Margins: for `beat_baseline` and `champion` gates `margin` is the *tolerated shortfall*. With
higher_is_better the candidate passes when `candidate >= reference - margin`; otherwise when
`candidate <= reference + margin`. Margin 0 means "a tie is fine, any regression fails". All bounds are
inclusive (a value exactly on the bound passes, up to float rounding).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from tasks.core.config import ChampionGate, GatesSection
from tasks.core.tags import TRAINING_TRIPPED_METRIC

_REL_TOL = 1e-9  # a value on the bound passes even after float rounding (0.3 - 0.1 != 0.2)


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
        verdict = "pass" if self.passed else "fail"
        text = f"{verdict} value={_fmt(self.value)} bound={_fmt(self.bound)}"
        return text if self.passed else f"{text} ({self.reason})"


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
    candidate: Mapping[str, float],
    *,
    gates: GatesSection,
    baseline: Mapping[str, float] | None,
    champion: Mapping[str, float] | None,
) -> GateDecision:
    """Apply every configured gate to a candidate's eval metrics.

    - thresholds: `value >= min` and/or `value <= max` (one gate per bound);
    - beat_baseline: not worse than the baseline (SFT) by more than `margin`; no baseline given → fail;
    - champion: not worse than the champion by more than `margin`; no champion → pass ("no champion yet");
    - always, for a candidate trained with reward-hacking monitors: none of them tripped.
    A metric missing (or NaN) in the candidate, or in the baseline/champion it is compared with, fails.
    """
    results: list[GateResult] = []
    if TRAINING_TRIPPED_METRIC in candidate:
        tripped = _get(candidate, TRAINING_TRIPPED_METRIC)
        ok = tripped == 0.0
        reason = "no monitor tripped" if ok else "a reward-hacking monitor tripped during training"
        results.append(GateResult(f"monitors:{TRAINING_TRIPPED_METRIC}==0", TRAINING_TRIPPED_METRIC, tripped, 0.0,
                                  ok, reason))
    for gate in gates.thresholds:
        value = _get(candidate, gate.metric)
        for op, bound in ((">=", gate.min), ("<=", gate.max)):  # MetricGate guarantees at least one bound
            if bound is None:
                continue
            name = f"threshold:{gate.metric}{op}{_fmt(bound)}"
            if value is None:
                results.append(GateResult(name, gate.metric, None, bound, False, _missing(gate.metric, "candidate")))
                continue
            ok = _at_least(value, bound) if op == ">=" else _at_least(bound, value)
            reason = f"{_fmt(value)} {op if ok else _negate(op)} {'min' if op == '>=' else 'max'} {_fmt(bound)}"
            results.append(GateResult(name, gate.metric, value, bound, ok, reason))
    # A missing baseline fails its gates; a missing champion passes them (there is nothing to fall behind yet).
    relative = (("baseline", gates.beat_baseline, baseline, False, "no baseline metrics given"),
                ("champion", gates.champion, champion, True, "no champion yet"))
    for kind, kind_gates, reference, passes_without, without_reason in relative:
        for gate in kind_gates:
            if reference is None:
                results.append(GateResult(f"{kind}:{gate.metric}", gate.metric, _get(candidate, gate.metric), None,
                                          passes_without, without_reason))
            else:
                results.append(_relative_gate(kind, gate, candidate, reference))
    return GateDecision(passed=all(r.passed for r in results), gates=results)


def _relative_gate(
    kind: str, gate: ChampionGate, candidate: Mapping[str, float], reference: Mapping[str, float]
) -> GateResult:
    name = f"{kind}:{gate.metric}"
    value = _get(candidate, gate.metric)
    ref = _get(reference, gate.metric)
    if ref is None:
        return GateResult(name, gate.metric, value, None, False, _missing(gate.metric, kind))
    bound = ref - gate.margin if gate.higher_is_better else ref + gate.margin
    if value is None:
        return GateResult(name, gate.metric, None, bound, False, _missing(gate.metric, "candidate"))
    ok = _at_least(value, bound) if gate.higher_is_better else _at_least(bound, value)
    sign, op = ("-", ">=") if gate.higher_is_better else ("+", "<=")
    shown_op = op if ok else _negate(op)
    reason = f"{_fmt(value)} {shown_op} {kind} {_fmt(ref)} {sign} margin {_fmt(gate.margin)} = {_fmt(bound)}"
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


def _fmt(value: float | None) -> str:
    return "missing" if value is None else f"{value:.6g}"


def safe_key(text: str) -> str:
    """MLflow metric/tag keys allow only [\\w.\\- /:] and a normalised path; replace anything else."""
    text = re.sub(r"[^\w.\- /:]", "_", text)
    return re.sub(r"/+", "/", text).strip("/") or "_"
