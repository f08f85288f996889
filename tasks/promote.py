"""Stage: gated promotion of the registered candidates to the `champion` alias.

It decides every candidate with the gates (`tasks.registry.gates`), logs each gate on its own MLflow child run,
tags the rejected versions and promotes the best passing one (`tasks.registry.promotion`). A failing candidate
is a result, not an exception.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from tasks.core.config import PipelineConfig
from tasks.core.errors import AlignflowError
from tasks.core.lineage import Lineage
from tasks.core.tags import GATE_TAG_PREFIX, NOT_PROMOTED_TAG, TAG_PREFIX
from tasks.registry.evaluations import gate_evaluation
from tasks.registry.gates import GateDecision, decide, pick_best, safe_key
from tasks.registry.promotion import describe, promote_version, record_rejection, tag_decision
from tasks.run.contract import StageResult, stage_key, stage_run

STAGE = "promote"
SECTIONS = ("gates", "registry")

log = logging.getLogger(__name__)


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
    return stage_key(STAGE, cfg, SECTIONS, _input_hashes(candidates, baseline, champion), code=__name__)


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
    decisions: dict[str, GateDecision] = {}
    metrics: dict[str, float] = {}
    with stage_run(STAGE, cfg, lineage, cache_key=key, sections=SECTIONS, parents=parents, code=__name__) as run, \
            tempfile.TemporaryDirectory() as tmp:
        if not (cfg.gates.thresholds or cfg.gates.beat_baseline or cfg.gates.champion):
            log.warning("promote: no gates configured; every candidate passes")
        # The gates read each evaluation's per-prompt values too: confidence bounds and paired tests.
        baseline_evaluation = gate_evaluation(baseline, Path(tmp) / "baseline")
        champion_evaluation = gate_evaluation(champion, Path(tmp) / "champion") if champion is not None else None
        for label, (registered, evaluation) in candidates.items():
            decision = decide(gate_evaluation(evaluation, Path(tmp) / "candidates" / label), gates=cfg.gates,
                              baseline=baseline_evaluation, champion=champion_evaluation)
            decisions[label] = decision
            slug = safe_key(label)
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
                record_rejection(_name_of(registered, cfg), _version_of(registered), decision,
                                 cfg.registry.candidate_alias)

        ranking = [(label, candidates[label][1].metrics, decision) for label, decision in decisions.items()]
        best = pick_best(ranking, cfg.gates.rank_metric, cfg.gates.rank_higher_is_better)
        client = MlflowClient()
        for label, decision in decisions.items():
            if decision.passed and label != best:
                registered = candidates[label][0]
                tag_decision(client, _name_of(registered, cfg), _version_of(registered), decision)
                not_promoted = f"{best} ranked higher on {cfg.gates.rank_metric}"
                client.set_model_version_tag(_name_of(registered, cfg), _version_of(registered), NOT_PROMOTED_TAG,
                                             not_promoted)
                describe(client, client.get_model_version(_name_of(registered, cfg), _version_of(registered)),
                         f"{decision.headline()}; not promoted: {not_promoted}")
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
