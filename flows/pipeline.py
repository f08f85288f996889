"""The Prefect flows of the pipeline. They only compose stages, top to bottom."""

from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.base_model import needs_validated_data
from tasks.core import stage_names as stage
from tasks.core.config import PipelineConfig, load_config
from tasks.core.lineage import Lineage
from tasks.core.secrets import install_log_redaction
from tasks.orchestration.comparison import COMPARISON, log_results
from tasks.orchestration.comparison_report import log_comparison_report
from tasks.orchestration.dispatch import check_dispatchable
from tasks.orchestration.parent_run import flow_lineage, parent_run
from tasks.orchestration.promotion import champion_task, promotion_lock, unchanged_task
from tasks.orchestration.stage_tasks import run_stage
from tasks.report.results import Method, ResultRow
from tasks.run.contract import StageResult
from tasks.run.lifecycle import reap_dead_runs
from tasks.run.tracking import configure_tracking


@flow(name="alignment_pipeline")
def alignment_pipeline(config_path: str, overrides: list[str] | None = None,
                       skip_if_unchanged: bool = False) -> dict[str, StageResult]:
    """Align a language model, one MLflow parent run per pipeline run.

    Steps:
    0. runs of this experiment left RUNNING by a killed process end KILLED. With skip_if_unchanged (scheduled
       runs): stop with "nothing changed" when the champion was trained on this DVC data version with this config.
    1. validate: Great Expectations suites on every dataset; bad data stops here (or is quarantined). Nothing
       reads a dataset before it: validation runs before the base model when that model is made from the data.
    2. base_model: the pretrained model, or the tiny Llama built from config with its own tokenizer.
    3. sft: supervised fine-tuning on the demonstrations.
    4. reward: a Bradley-Terry reward model on the preference pairs, from the SFT model, where something uses it
       (`PipelineConfig.trains_reward_model`); with `safe_ppo` among the optimizers, cost: Safe RLHF's cost model
       on the same pairs' harmlessness, from the SFT model.
    5. evaluate-sft: the baseline: perplexity, safety, (with a reward model) reward, and length of the SFT model;
       registered. With `eval.base`, evaluate-base first measures the base model the same way (the "before").
    6. for each optimizer in `optimizers`: train it (dpo: from preferences; ppo and rloo: against the reward model;
       safe_ppo: against the reward model under the cost model's limit), evaluate it against the SFT baseline on
       the same eval, register it.
    7. under the registry's promotion lock: evaluate the current champion (if any) on the same eval, then
       promote: gate every candidate; the best one that passes becomes the champion.
    8. the results table (a row per evaluated model), as the parent run's description, `comparison/` and the
       HTML report.
    Stages listed in `dispatch.pools` run as deployments on those work pools' workers.
    """
    install_log_redaction()
    cfg = load_config(config_path, overrides)
    reap_dead_runs([configure_tracking(cfg)])  # runs a kill -9 left RUNNING end KILLED before new ones start
    refuse_early(cfg)
    lineage = flow_lineage(cfg.section_hash(), cfg)
    if skip_if_unchanged:
        unchanged = unchanged_task(cfg, lineage)
        if unchanged is not None:
            get_run_logger().info(unchanged)
            return {}
    with parent_run(f"{cfg.name}-pipeline", lineage, cfg, configs={"config.yaml": cfg}) as lineage:
        results, judged = baseline_stages(cfg, lineage)
        train_and_promote(cfg, lineage, results, judged, start=results["sft"], data=results["data"])
    return results


@flow(name="data_validation")
def data_validation(config_path: str, overrides: list[str] | None = None) -> StageResult:
    """Validate the datasets only.

    Steps: validate (Great Expectations suites on every dataset) and base_model (the tokenizer token lengths are
    counted with), in the order of the full pipeline.
    """
    install_log_redaction()
    cfg = load_config(config_path, overrides)
    configure_tracking(cfg)
    lineage = flow_lineage(cfg.section_hash(), cfg)
    with parent_run(f"{cfg.name}-validation", lineage, cfg, configs={"config.yaml": cfg}) as lineage:
        return base_and_data(cfg, lineage)["data"]


def refuse_early(cfg: PipelineConfig) -> None:
    """What is wrong before anything trains, said now rather than after an hour of training: a stage sent to a
    pool that cannot run it, or a champion of another base model to be judged beside."""
    check_dispatchable(cfg)
    champion_task(cfg)


def baseline_stages(cfg: PipelineConfig, lineage: Lineage) -> tuple[dict[str, StageResult], dict[str, StageResult]]:
    """Steps 1-5: validated data, base model, SFT, reward model, and the SFT baseline evaluated and registered.
    Returns the results and the inputs every evaluation is judged with (data, reward model, SFT reference)."""
    results, judged = evaluated_baseline(cfg, lineage)
    results["register-sft"] = run_stage(stage.REGISTER, cfg, lineage, policy=results["sft"],
                                        evaluation=results["evaluate-sft"])
    return results, judged


def evaluated_baseline(cfg: PipelineConfig, lineage: Lineage) -> tuple[dict[str, StageResult],
                                                                       dict[str, StageResult]]:
    """Steps 1-5 less the registration: what a study that registers no policy (a learning curve) trains too."""
    results = base_and_data(cfg, lineage)
    data = results["data"]
    results["sft"] = sft = run_stage(stage.SFT, cfg, lineage, base=results["base"], data=data)
    if cfg.trains_reward_model():
        results["reward"] = run_stage(stage.REWARD, cfg, lineage, sft=sft, data=data)
    if stage.SAFE_PPO in cfg.optimizers:
        results["cost"] = run_stage(stage.COST, cfg, lineage, sft=sft, data=data)
    judged = {"data": data, "reward": results.get("reward"), "reference": sft}
    if cfg.eval.base:  # the "before": measured like the others, less the KL to a reference it precedes
        results["evaluate-base"] = judged["base"] = run_stage(stage.EVALUATE, cfg, lineage, policy=results["base"],
                                                             label="base", **{**judged, "reference": None})
    results["evaluate-sft"] = run_stage(stage.EVALUATE, cfg, lineage, policy=sft, label="sft", **judged)
    return results, judged


def train_and_promote(cfg: PipelineConfig, lineage: Lineage, results: dict[str, StageResult],
                      judged: dict[str, StageResult], *, start: StageResult, data: StageResult,
                      train_cfg: PipelineConfig | None = None,
                      candidates: dict[str, tuple[StageResult, StageResult]] | None = None,
                      methods: list[Method] | None = None) -> list[ResultRow]:
    """Steps 6 to 8: each optimizer trains from `start` on `data` (under `train_cfg`, default `cfg`), then is
    evaluated against the SFT baseline and registered; under the promotion lock the champion is re-evaluated on
    the same eval and the gates pick the new champion among these and the already registered `candidates`
    (label -> (register, evaluate) results, declared in `methods`); the results table then sums it up. Adds every
    stage's result to `results` and returns the table's rows."""
    baseline = results["evaluate-sft"]
    candidates = dict(candidates or {})
    declared = trained_methods(cfg, lineage, results, judged, start=start, data=data, train_cfg=train_cfg)
    for name in cfg.optimizers:
        results[f"register-{name}"] = registered = run_stage(stage.REGISTER, cfg, lineage, policy=results[name],
                                                             evaluation=results[f"evaluate-{name}"])
        candidates[name] = (registered, results[f"evaluate-{name}"])
    declared += methods or []

    with promotion_lock(cfg):  # the champion read here is still the champion when the gates decide
        champion = champion_task(cfg)
        if champion is not None:
            results["evaluate-champion"] = run_stage(stage.EVALUATE, cfg, lineage, policy=champion,
                                                     label="champion", baseline=baseline, **judged)
            declared.append(Method(label="champion", role="champion"))
        results["promote"] = run_stage(stage.PROMOTE, cfg, lineage,
                                       candidates=candidates or {"sft": (results["register-sft"], baseline)},
                                       baseline=baseline, champion=results.get("evaluate-champion"))
    rows = log_results(cfg, results, declared, data)
    log_comparison_report(cfg, lineage, results, rows)
    # The parent run, which holds the rows: cached stages' runs belong to earlier parents.
    results[COMPARISON] = StageResult(stage=COMPARISON, run_id=lineage.parent_run_id, cache_key=lineage.config_hash)
    return rows


def trained_methods(cfg: PipelineConfig, lineage: Lineage, results: dict[str, StageResult],
                    judged: dict[str, StageResult], *, start: StageResult, data: StageResult,
                    train_cfg: PipelineConfig | None = None) -> list[Method]:
    """Step 6 less the registration: each optimizer trains from `start` on `data` and is evaluated against the
    SFT baseline. Adds `<optimizer>` and `evaluate-<optimizer>` to `results`; returns the methods evaluated, the
    base model's and SFT's first."""
    inputs = optimizer_inputs(results)
    declared = [*([Method(label="base", role="before")] if "evaluate-base" in results else []),
                Method(label="sft", role="baseline", stages=("sft",), human_data=("sft_train",))]
    for name in cfg.optimizers:
        results[name] = policy = run_stage(name, train_cfg or cfg, lineage, sft=start, data=data,
                                           **inputs[name])
        declared.append(Method(label=name, stages=("sft", *inputs[name], name),
                               human_data=("sft_train", "preferences_train")))
        results[f"evaluate-{name}"] = run_stage(stage.EVALUATE, cfg, lineage, policy=policy, label=name,
                                                baseline=results["evaluate-sft"], **judged)
    return declared


def optimizer_inputs(results: dict[str, StageResult]) -> dict[str, dict[str, StageResult | None]]:
    """What each optimizer trains against besides the SFT model and data: the reward model, and the cost model."""
    reward = results.get("reward")
    return {stage.DPO: {}, stage.PPO: {"reward": reward}, stage.RLOO: {"reward": reward},
            stage.SAFE_PPO: {"reward": reward, "cost": results.get("cost")}}


def base_and_data(cfg: PipelineConfig, lineage: Lineage) -> dict[str, StageResult]:
    """A base model made from the data comes after validation; a pretrained one first, so validation counts
    token lengths with its tokenizer."""
    if needs_validated_data(cfg):
        data = run_stage(stage.VALIDATE, cfg, lineage)
        return {"data": data, "base": run_stage(stage.BASE_MODEL, cfg, lineage, data=data)}
    base = run_stage(stage.BASE_MODEL, cfg, lineage)
    return {"base": base, "data": run_stage(stage.VALIDATE, cfg, lineage, base=base)}
