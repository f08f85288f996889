"""Stage: gated promotion of a registered policy to the `champion` alias, and the registry operations around it.

Three layers, from pure to MLflow:

- `decide` / `pick_best`: the gate logic on plain metric dicts (no MLflow), so it is easy to test and to read.
  Thresholds are absolute bars; `beat_baseline` compares with the SFT model; `champion` with the current champion
  on the same eval set. A metric the candidate lacks fails its gate: a gate never passes silently.
- `promote_version`, `record_rejection`, `rollback`, `registry_status`: the registry, through
  `mlflow.MlflowClient`. Aliases are the source of truth (`champion`, `previous-champion`); version tags keep the
  audit trail (`alignflow.promotion`, `alignflow.promoted_at`, `alignflow.gate.*`, `alignflow.rolled_back`).
- `run_promote`: the stage. It decides every candidate, logs each gate on its own MLflow child run, tags the
  rejected versions and promotes the best passing one. A failing candidate is a result, not an exception.

Margins: for `beat_baseline` and `champion` gates `margin` is the *tolerated shortfall*. With
higher_is_better the candidate passes when `candidate >= reference - margin`; otherwise when
`candidate <= reference + margin`. Margin 0 means "a tie is fine, any regression fails". All bounds are
inclusive (a value exactly on the bound passes, up to float rounding).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from flows.config import ChampionGate, GatesConfig, PipelineConfig, RegistryConfig
from flows.errors import AlignflowError
from tasks.stage import TAG_PREFIX, Lineage, StageResult, stage_key, stage_run

STAGE = "promote"
SECTIONS = ("gates", "registry")

log = logging.getLogger(__name__)

# Version tags written here (metric tags `alignflow.eval/...` and lineage tags come from the register stage).
PROMOTION_TAG = f"{TAG_PREFIX}promotion"  # "gated" or "manual"
PROMOTED_AT_TAG = f"{TAG_PREFIX}promoted_at"  # UTC ISO time of the latest promotion of this version
PROMOTION_REASON_TAG = f"{TAG_PREFIX}promotion_reason"
DECISION_TAG = f"{TAG_PREFIX}gate_decision"  # "pass" or "fail"
GATE_TAG_PREFIX = f"{TAG_PREFIX}gate."  # + GateResult.key: "pass value=… bound=…" / "fail value=… bound=… (…)"
NOT_PROMOTED_TAG = f"{TAG_PREFIX}not_promoted_reason"
ROLLED_BACK_TAG = f"{TAG_PREFIX}rolled_back"  # "true" on a champion that a rollback demoted
ROLLED_BACK_AT_TAG = f"{TAG_PREFIX}rolled_back_at"
_LINEAGE_TAGS = (f"{TAG_PREFIX}git_sha", f"{TAG_PREFIX}config_hash", f"{TAG_PREFIX}dvc_data_md5")
_METRIC_TAG_PREFIX = f"{TAG_PREFIX}eval/"
_REL_TOL = 1e-9  # a value on the bound passes even after float rounding (0.3 - 0.1 != 0.2)


class RegistryError(AlignflowError):
    """A registry operation cannot be done as asked (no such version, nothing to roll back); nothing was changed."""


# --------------------------------------------------------------------------------------------------------------
# Gate logic (pure)


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
        return _safe_key(f"{kind}/{self.metric}")

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


def decide(
    candidate: Mapping[str, float],
    *,
    gates: GatesConfig,
    baseline: Mapping[str, float] | None,
    champion: Mapping[str, float] | None,
) -> GateDecision:
    """Apply every configured gate to a candidate's eval metrics.

    - thresholds: `value >= min` and/or `value <= max` (one gate per bound);
    - beat_baseline: not worse than the baseline (SFT) by more than `margin`; no baseline given → fail;
    - champion: not worse than the champion by more than `margin`; no champion → pass ("no champion yet").
    A metric missing (or NaN) in the candidate, or in the baseline/champion it is compared with, fails.
    """
    results: list[GateResult] = []
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


def _safe_key(text: str) -> str:
    """MLflow metric/tag keys allow only [\\w.\\- /:] and a normalised path; replace anything else."""
    text = re.sub(r"[^\w.\- /:]", "_", text)
    return re.sub(r"/+", "/", text).strip("/") or "_"


# --------------------------------------------------------------------------------------------------------------
# Registry operations


def promote_version(
    name: str, version: str, registry: RegistryConfig, *, reason: str, decision: GateDecision | None = None
) -> None:
    """Make `version` the champion; the champion it replaces becomes `previous-champion`.

    Tags the version with how (`gated` when a decision is given, else `manual`), when and why it was promoted,
    and the gate results. Promoting the version that already is champion changes no alias and no promotion tag.
    A failed `decision` raises `RegistryError` (a manual promotion passes no decision). Nothing is changed when
    the model or version does not exist.
    """
    client = MlflowClient()
    version = str(version)
    if decision is not None and not decision.passed:
        raise RegistryError(f"{name} version {version} failed its gates ({decision.summary()}); not promoted")
    aliases = _aliases(client, name)
    _version(client, name, version)  # raises RegistryError when it does not exist
    current = aliases.get(registry.champion_alias)
    if decision is not None:
        _tag_decision(client, name, version, decision)
    if current == version:
        log.info("%s version %s is already the %s; nothing to change", name, version, registry.champion_alias)
        return
    if current is not None:
        client.set_registered_model_alias(name, registry.previous_champion_alias, current)
    client.set_registered_model_alias(name, registry.champion_alias, version)
    tags = {
        PROMOTION_TAG: "gated" if decision is not None else "manual",
        PROMOTED_AT_TAG: _now(),
        PROMOTION_REASON_TAG: reason,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    _delete_tag(client, name, version, ROLLED_BACK_TAG)  # promoted again: it is no longer a rolled-back version
    _delete_tag(client, name, version, NOT_PROMOTED_TAG)
    log.info("%s version %s is now %s (was %s): %s", name, version, registry.champion_alias, current, reason)


def record_rejection(name: str, version: str, decision: GateDecision) -> None:
    """Tag a candidate version with its failed gate decision; no alias changes."""
    client = MlflowClient()
    _version(client, name, str(version))
    _tag_decision(client, name, str(version), decision)


def rollback(name: str, registry: RegistryConfig) -> str:
    """Hand `champion` back to `previous-champion`; returns the new champion version.

    The demoted champion is tagged `alignflow.rolled_back=true`. The `previous-champion` alias then moves to the
    version that was champion before the restored one: the latest `alignflow.promoted_at` earlier than the
    restored version's own, skipping rolled-back versions and the two involved here; it is removed when there
    is none. So repeated rollbacks walk back through the promotion history. With no previous champion this raises
    `RegistryError` and changes nothing.
    """
    client = MlflowClient()
    aliases = _aliases(client, name)
    restored = aliases.get(registry.previous_champion_alias)
    if restored is None:
        raise RegistryError(
            f"nothing to roll back: {name} has no '{registry.previous_champion_alias}' alias "
            f"(current {registry.champion_alias}: {_vname(aliases.get(registry.champion_alias))})"
        )
    demoted = aliases.get(registry.champion_alias)
    versions = {str(v.version): v for v in _all_versions(client, name)}
    earlier = _champion_before(versions, restored, exclude={restored, demoted})

    client.set_registered_model_alias(name, registry.champion_alias, restored)
    if demoted is not None and demoted != restored:
        client.set_model_version_tag(name, demoted, ROLLED_BACK_TAG, "true")
        client.set_model_version_tag(name, demoted, ROLLED_BACK_AT_TAG, _now())
    if earlier is None:
        client.delete_registered_model_alias(name, registry.previous_champion_alias)
    else:
        client.set_registered_model_alias(name, registry.previous_champion_alias, earlier)
    log.warning("%s rolled back: %s %s -> %s; %s now %s", name, registry.champion_alias, demoted, restored,
                registry.previous_champion_alias, earlier or "unset")
    return restored


def _champion_before(versions: Mapping[str, ModelVersion], restored: str, exclude: set[str | None]) -> str | None:
    restored_at = _promoted_at(versions.get(restored))
    if restored_at is None:
        return None
    best: tuple[datetime, int, str] | None = None
    for number, version in versions.items():
        when = _promoted_at(version)
        if number in exclude or when is None or version.tags.get(ROLLED_BACK_TAG) == "true" or when >= restored_at:
            continue
        if best is None or (when, int(number)) > best[:2]:
            best = (when, int(number), number)
    return best[2] if best else None


def _promoted_at(version: ModelVersion | None) -> datetime | None:
    raw = version.tags.get(PROMOTED_AT_TAG) if version is not None else None
    try:
        return datetime.fromisoformat(raw) if raw else None
    except ValueError:
        return None


def registry_status(name: str, registry: RegistryConfig) -> list[dict]:
    """One row per version of `name`, newest first; [] when the model is not registered yet.

    Row keys: version, model_uri, aliases, created_at, gate_decision, promotion, promoted_at, promotion_reason,
    rolled_back, source_stage, source_run_id, run_id, lineage (git sha, config hash, DVC md5, parent.* tags),
    metrics (from the `alignflow.eval/...` tags, as floats) and gates (the `alignflow.gate.*` tags).
    """
    client = MlflowClient()
    try:
        aliases = _aliases(client, name)
    except RegistryError:
        return []
    by_version: dict[str, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(number, []).append(alias)
    order = {registry.champion_alias: 0, registry.previous_champion_alias: 1, registry.candidate_alias: 2}
    rows = []
    for version in sorted(_all_versions(client, name), key=lambda v: int(v.version), reverse=True):
        tags = version.tags
        number = str(version.version)
        rows.append({
            "version": number,
            "model_uri": f"models:/{name}/{number}",
            "aliases": sorted(by_version.get(number, []), key=lambda a: (order.get(a, 9), a)),
            "created_at": _iso_ms(version.creation_timestamp),
            "gate_decision": tags.get(DECISION_TAG, ""),
            "promotion": tags.get(PROMOTION_TAG, ""),
            "promoted_at": tags.get(PROMOTED_AT_TAG, ""),
            "promotion_reason": tags.get(PROMOTION_REASON_TAG, ""),
            "rolled_back": tags.get(ROLLED_BACK_TAG) == "true",
            "source_stage": tags.get(f"{TAG_PREFIX}source_stage", ""),
            "source_run_id": tags.get(f"{TAG_PREFIX}source_run_id", ""),
            "run_id": version.run_id or "",
            "lineage": {k: v for k, v in sorted(tags.items())
                        if k in _LINEAGE_TAGS or k.startswith(f"{TAG_PREFIX}parent.")},
            "metrics": _metric_tags(tags),
            "gates": {k[len(GATE_TAG_PREFIX):]: v for k, v in sorted(tags.items()) if k.startswith(GATE_TAG_PREFIX)},
        })
    return rows


def alias_versions(name: str) -> dict[str, str]:
    """Alias → version of a registered model; raises RegistryError when the model does not exist."""
    return _aliases(MlflowClient(), name)


def _metric_tags(tags: Mapping[str, str]) -> dict[str, float]:
    metrics = {}
    for key, raw in sorted(tags.items()):
        if key.startswith(_METRIC_TAG_PREFIX):
            try:
                metrics[key[len(TAG_PREFIX):]] = float(raw)
            except ValueError:
                continue
    return metrics


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"no registered model named '{name}' at {mlflow.get_tracking_uri()}") from None
        raise
    return {alias: str(number) for alias, number in model.aliases.items()}


def _version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, version)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise RegistryError(f"{name} has no version {version}") from None
        raise


def _all_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    query = "name = '{}'".format(name.replace("'", "\\'"))
    versions: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(query, page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            return versions


def _tag_decision(client: MlflowClient, name: str, version: str, decision: GateDecision) -> None:
    client.set_model_version_tag(name, version, DECISION_TAG, "pass" if decision.passed else "fail")
    for gate in decision.gates:
        client.set_model_version_tag(name, version, f"{GATE_TAG_PREFIX}{gate.key}", gate.tag_value())


def _delete_tag(client: MlflowClient, name: str, version: str, key: str) -> None:
    if key in client.get_model_version(name, version).tags:
        client.delete_model_version_tag(name, version, key)


def _vname(version: str | None) -> str:
    return f"version {version}" if version is not None else "none"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _iso_ms(millis: int | None) -> str:
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds") if millis else ""


# --------------------------------------------------------------------------------------------------------------
# The stage


def _input_hashes(
    candidates: Mapping[str, tuple[StageResult, StageResult]], baseline: StageResult, champion: StageResult | None
) -> dict[str, str]:
    hashes = {"baseline": baseline.cache_key, "champion": champion.cache_key if champion else "none"}
    for label, (registered, evaluation) in candidates.items():
        hashes[f"{label}.register"] = registered.cache_key
        hashes[f"{label}.evaluate"] = evaluation.cache_key
    return hashes


def promote_key(
    cfg: PipelineConfig,
    candidates: Mapping[str, tuple[StageResult, StageResult]],
    baseline: StageResult,
    champion: StageResult | None,
) -> str:
    return stage_key(STAGE, cfg, SECTIONS, _input_hashes(candidates, baseline, champion))


def run_promote(
    cfg: PipelineConfig,
    lineage: Lineage,
    *,
    candidates: Mapping[str, tuple[StageResult, StageResult]],
    baseline: StageResult,
    champion: StageResult | None,
) -> StageResult:
    """Gate every candidate, tag the rejected versions, promote the best passing one to champion.

    `candidates` maps a label (dpo, ppo, …) to its (register, evaluate) results; `baseline` is the SFT model's
    evaluation and `champion` the current champion's, on the same eval set (None when there is no champion).
    """
    key = promote_key(cfg, candidates, baseline, champion)
    parents = {label: registered.model_uri for label, (registered, _) in candidates.items() if registered.model_uri}
    champion_metrics = champion.metrics if champion is not None else None
    decisions: dict[str, GateDecision] = {}
    metrics: dict[str, float] = {}
    with stage_run(STAGE, cfg, lineage, cache_key=key, sections=SECTIONS, parents=parents) as run:
        if not (cfg.gates.thresholds or cfg.gates.beat_baseline or cfg.gates.champion):
            log.warning("promote: no gates configured; every candidate passes")
        for label, (registered, evaluation) in candidates.items():
            decision = decide(evaluation.metrics, gates=cfg.gates, baseline=baseline.metrics, champion=champion_metrics)
            decisions[label] = decision
            slug = _safe_key(label)
            tags = {f"{GATE_TAG_PREFIX}{slug}.decision": "pass" if decision.passed else "fail",
                    f"{GATE_TAG_PREFIX}{slug}.version": _version_of(registered)}
            metrics[f"gate/{slug}/passed"] = 1.0 if decision.passed else 0.0
            for gate in decision.gates:
                tags[f"{GATE_TAG_PREFIX}{slug}.{gate.key}"] = "pass" if gate.passed else "fail"
                if gate.value is not None:
                    metrics[f"gate/{slug}/{gate.key}"] = gate.value
            mlflow.set_tags(tags)
            if not decision.passed:
                log.warning("promote: candidate %s (%s version %s) rejected: %s", label, _name_of(registered, cfg),
                            _version_of(registered), decision.summary())
                record_rejection(_name_of(registered, cfg), _version_of(registered), decision)

        ranking = [(label, candidates[label][1].metrics, decision) for label, decision in decisions.items()]
        best = pick_best(ranking, cfg.gates.rank_metric, cfg.gates.rank_higher_is_better)
        client = MlflowClient()
        for label, decision in decisions.items():
            if decision.passed and label != best:
                registered = candidates[label][0]
                _tag_decision(client, _name_of(registered, cfg), _version_of(registered), decision)
                client.set_model_version_tag(_name_of(registered, cfg), _version_of(registered), NOT_PROMOTED_TAG,
                                             f"{best} ranked higher on {cfg.gates.rank_metric}")
        promoted_name = promoted_version = ""
        if best is not None:
            registered = candidates[best][0]
            promoted_name, promoted_version = _name_of(registered, cfg), _version_of(registered)
            reason = (f"gated: {best} passed all {len(decisions[best].gates)} gates and ranked best of "
                      f"{sum(d.passed for d in decisions.values())} passing on {cfg.gates.rank_metric}")
            promote_version(promoted_name, promoted_version, cfg.registry, reason=reason, decision=decisions[best])
        elif candidates:
            log.warning("promote: no candidate passed its gates; the champion stays as it is")
        summary = " | ".join(f"{label}: {decision.summary()}" for label, decision in decisions.items())
        metrics["promote/promoted"] = 1.0 if best is not None else 0.0
        mlflow.log_metrics(metrics)
        mlflow.set_tags({f"{TAG_PREFIX}promoted": best or "", f"{TAG_PREFIX}promoted_version": promoted_version,
                         f"{TAG_PREFIX}gate_summary": summary[:5000]})
        mlflow.log_dict(
            {label: {"passed": d.passed, "summary": d.summary(), "version": _version_of(candidates[label][0]),
                     "gates": [vars(g) | {"key": g.key} for g in d.gates]} for label, d in decisions.items()},
            "gates.json",
        )
    return StageResult(
        stage=STAGE,
        run_id=run.info.run_id,
        cache_key=key,
        model_uri=f"models:/{promoted_name}/{promoted_version}" if best is not None else None,
        metrics=metrics,
        outputs={"promoted": best or "", "version": promoted_version, "summary": summary},
        input_hashes=_input_hashes(candidates, baseline, champion),
    )


def _name_of(registered: StageResult, cfg: PipelineConfig) -> str:
    return registered.outputs.get("name") or cfg.registry.policy_name


def _version_of(registered: StageResult) -> str:
    try:
        return registered.outputs["version"]
    except KeyError:
        raise AlignflowError(f"stage {registered.stage} result names no registered version") from None
