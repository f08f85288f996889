"""Rounds of fresh feedback: the seed's "iterate". It only composes steps; they live in `tasks.feedback`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger

from flows.pipeline import baseline_stages, refuse_early, train_and_promote
from tasks.base_model import needs_validated_data
from tasks.core import stage_names as stage
from tasks.core.config import IterateSection, PipelineConfig, load_config
from tasks.core.lineage import Lineage
from tasks.core.secrets import install_log_redaction
from tasks.core.tags import TAG_PREFIX
from tasks.feedback import rounds
from tasks.feedback.export import log_export
from tasks.feedback.importing import import_feedback, log_import
from tasks.orchestration.parent_run import flow_lineage, parent_run
from tasks.orchestration.promotion import champion_task
from tasks.orchestration.stage_tasks import run_stage
from tasks.run.contract import StageResult
from tasks.run.lifecycle import reap_dead_runs
from tasks.run.tracking import configure_tracking

ROUND_TAG = f"{TAG_PREFIX}feedback_round"
LABELER_TAG = f"{TAG_PREFIX}feedback_labeler"
START_TAG = f"{TAG_PREFIX}feedback_start_model"  # the champion (or SFT model) the round started from
ROUND_DATA_TAG = f"{TAG_PREFIX}feedback_data_md5"
REWARD_MODEL_TAG = f"{TAG_PREFIX}feedback_reward_model"  # the reward model the round's PPO/RLOO optimised against


@flow(name="feedback_rounds")
def feedback_rounds(config_path: str, overrides: list[str] | None = None) -> list[dict]:
    """Rounds 1..n of fresh feedback (the config's `iterate` section), one MLflow parent run each, tagged with
    the round, the model it started from and its data version. Round k:

    1. the SFT pipeline's stages (cached: unchanged data), giving the reward model and the SFT baseline;
    2. plan: the champion (the SFT model while there is none; with `start_from: previous`, the last round's
       candidate) and prompts no earlier round asked;
    3. export: two sampled answers per prompt (with `reward` and samples_per_prompt > 2: the best and the worst
       of that many), in a shuffled A/B order;
    4. label: `reward` scores both answers with the reward model; `ai` asks the CAI feedback model in both
       orders; `simulated` applies the simulated annotator's rules (a simulation, not people); `human` stops
       here until people's labels are in the round's folder (`alignflow feedback page --out
       <round>/labels.jsonl`), then rerun;
    5. import: every labelled pair of rounds 1..k as a new DVC data version (validated);
    6. with PPO or RLOO (and `retrain_reward`): retrain the reward model on every comparison so far, scored
       before and after on a held-out share of the round's fresh pairs (`retrain_reward`);
    7. train each optimizer from the round's starting model on it, evaluate, register, gate and promote.
    Stops after a round that waits for people.
    """
    install_log_redaction()
    cfg = load_config(config_path, overrides)
    reap_dead_runs([configure_tracking(cfg)])
    refuse_early(cfg)
    settings = rounds.round_settings(cfg)
    summaries = []
    for k in range(1, settings.rounds + 1):
        summaries.append(feedback_round(config_path, overrides, cfg, k, settings))
        if summaries[-1]["status"] == "waiting":
            break
    return summaries


def feedback_round(config_path: str, overrides: list[str] | None, cfg: PipelineConfig, k: int,
                   settings: IterateSection) -> dict:
    log = get_run_logger()
    labeler = settings.labeler
    lineage = flow_lineage(cfg.section_hash(), cfg)
    with parent_run(f"{cfg.name}-feedback-round-{k}", lineage, cfg, configs={"config.yaml": cfg},
                    tags={ROUND_TAG: str(k), LABELER_TAG: labeler}) as lineage:
        results, judged = baseline_stages(cfg, lineage)
        start, prompts = rounds.plan_round(settings, k, start=champion_task(cfg) or results["sft"])
        mlflow.set_tag(START_TAG, start.model_uri)
        pairs_file, exported = rounds.export_round(cfg, settings, k, start, prompts,
                                                   reward=results["reward"] if labeler == "reward" else None)
        if exported:
            log_export(pairs_file.parent, {"round": k, "model_uri": start.model_uri}, nested=True,
                       tags={ROUND_TAG: str(k)})
        labels = rounds.labels_file(settings, k)
        if labels is None and labeler == "reward":
            labels = rounds.label_with_reward_model(cfg, settings, k, pairs_file, results["reward"])
        if labels is None and labeler == "ai":
            labels = rounds.label_with_ai(cfg, settings, k, pairs_file, start.model_uri)
        if labels is None and labeler == "simulated":
            labels = rounds.label_with_simulation(settings, k, pairs_file)
        if labels is None:
            waiting = (f"round {k} waits for labels: alignflow feedback page --pairs {pairs_file} --out "
                       f"{rounds.round_dir(settings, k) / rounds.LABEL_FILES[0]} (or put a Label Studio / Argilla "
                       f"export there as {' / '.join(rounds.LABEL_FILES[1:])}), then rerun this command")
            log.info(waiting)
            mlflow.set_tag(f"{TAG_PREFIX}feedback_waiting", waiting)
            return {"round": k, "status": "waiting", "message": waiting, "pairs": str(pairs_file)}

        data_dir = rounds.imported_data(settings, k)
        if data_dir is None:  # round 1 starts the feedback data; later rounds add to the previous round's
            previous = cfg if k == 1 else _with_data(config_path, overrides, rounds.imported_data(settings, k - 1))
            imported = import_feedback(previous, labels, pairs_file, rounds.round_dir(settings, k) / "data",
                                       mode="replace" if k == 1 else "append", dvc=settings.dvc,
                                       source={"round": k, "labeler": labeler})
            log_import(imported, nested=True, tags={ROUND_TAG: str(k)})
            data_dir = imported.folder
        round_cfg = _with_data(config_path, overrides, data_dir)
        # The round's runs and registered versions carry its data version and its number.
        round_lineage = replace(lineage, data_md5=flow_lineage(round_cfg.section_hash(), round_cfg).data_md5,
                                data_tags=(*lineage.data_tags, (ROUND_TAG, str(k))))
        mlflow.set_tag(ROUND_DATA_TAG, round_lineage.data_md5)
        base = {} if needs_validated_data(cfg) else {"base": results["base"]}
        data = run_stage(stage.VALIDATE, round_cfg, round_lineage, **base)
        if settings.retrain_reward and set(stage.REWARD_OPTIMIZERS) & set(cfg.optimizers):
            results["reward"] = retrain_reward(config_path, overrides, cfg, settings, k, data_dir, round_lineage,
                                               results, base)
        rows = train_and_promote(cfg, round_lineage, results, judged, start=start, data=data, train_cfg=round_cfg)
        if cfg.optimizers:
            rounds.record_candidate(settings, k, results[cfg.optimizers[0]])
    return {"round": k, "status": "trained", "start": start.model_uri, "data_dir": str(data_dir),
            "data_md5": round_lineage.data_md5, "promoted": results["promote"].model_uri,
            "rows": [row.model_dump(mode="json") for row in rows]}


def retrain_reward(config_path: str, overrides: list[str] | None, cfg: PipelineConfig, settings: IterateSection,
                   k: int, data_dir: Path, lineage: Lineage, results: dict[str, StageResult],
                   base: dict[str, StageResult]) -> StageResult:
    """The round's reward model: trained from the SFT model on the original comparisons and every round's so far
    (less a held-out share of this round's), validated as any data. The reward models before and after are both
    scored on the held-out pairs, and the round's parent run names the new one. Evaluation keeps judging with
    the pipeline's own reward model, so rounds stay comparable."""
    folder, held_out = rounds.reward_data(cfg, settings, k, data_dir)
    reward_cfg = _with_data(config_path, overrides, folder)
    reward_lineage = replace(lineage, data_md5=flow_lineage(reward_cfg.section_hash(), reward_cfg).data_md5)
    data = run_stage(stage.VALIDATE, reward_cfg, reward_lineage, **base)
    reward = run_stage(stage.REWARD, reward_cfg, reward_lineage, sft=results["sft"], data=data)
    mlflow.set_tag(REWARD_MODEL_TAG, reward.model_uri)
    if held_out:
        scratch = cfg.work_dir / "feedback-rounds" / f"round-{k}"
        mlflow.log_metrics({
            "feedback/reward_heldout_pairs": float(len(held_out)),
            "feedback/reward_heldout_accuracy_before": rounds.reward_accuracy(cfg, results["reward"], held_out,
                                                                              scratch / "before"),
            "feedback/reward_heldout_accuracy_after": rounds.reward_accuracy(cfg, reward, held_out, scratch / "after"),
        })
    return reward


def _with_data(config_path: str, overrides: list[str] | None, data_dir) -> PipelineConfig:
    return load_config(config_path, [*(overrides or []), f"data.dir={data_dir}"])
