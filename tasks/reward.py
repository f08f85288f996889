"""Stage: a reward model trained on preference pairs with TRL's `RewardTrainer` (Bradley–Terry loss).

The reward model starts from the SFT model with a new scalar score head. It is measured on the held-out
preference pairs (`reward/accuracy`, `reward/margin`), logged as a servable pyfunc and registered as a new
version of `registry.reward_name`, tagged with its lineage and metrics. Checkpoints resume as in SFT.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from trl import RewardConfig, RewardTrainer

from models.prompting import prompt_formatter
from models.reward import preference_metrics
from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.core.tags import TAG_PREFIX
from tasks.data.preferences import preference_dataset
from tasks.data.readers import read_rows
from tasks.data.validated import validated_file
from tasks.recipes.scoring_models import reward_peft_config, saved_pair_scores
from tasks.registry.logged_models import load_stage_reward_model, log_hf_model
from tasks.registry.versions import register_version, version_tags
from tasks.run.contract import StageResult, follower_result, stage_key, stage_run, work_dir
from tasks.training.trainer import (
    callbacks,
    final_log,
    train_and_save,
    training_arguments,
)

STAGE = "reward"
SECTIONS = ("reward", "model", "validation")
# MLflow reserves the alias "latest" (`models:/<name>/latest` already means the highest version), so the
# newest reward model gets its own alias.
# The Trainer's own logs (loss, accuracy and margin on training batches) go under reward/train/, so they never
# mix with the held-out reward/accuracy and reward/margin in one MLflow metric.
_TRAIN_METRIC_PREFIX = f"{STAGE}/train"


def _input_hashes(sft: StageResult, data: StageResult) -> dict[str, str]:
    return {
        "sft": sft.output_hashes["model"],
        "preferences_train": data.output_hashes["preferences_train"],
        "preferences_eval": data.output_hashes["preferences_eval"],
    }


def reward_key(cfg: PipelineConfig, sft: StageResult, data: StageResult) -> str:
    return stage_key(STAGE, cfg, SECTIONS, _input_hashes(sft, data), code=__name__)


def run_reward(cfg: PipelineConfig, lineage: Lineage, *, sft: StageResult, data: StageResult) -> StageResult:
    if sft.model_uri is None:
        raise ValueError(f"stage {sft.stage} produced no model to train a reward model from")
    key = reward_key(cfg, sft, data)
    stage_dir = work_dir(cfg, STAGE, key)
    parents = {"sft": sft.model_uri}
    with stage_run(STAGE, cfg, lineage, cache_key=key, sections=SECTIONS, parents=parents, code=__name__) as run:
        model, tokenizer = _setup_model(cfg, sft, stage_dir)
        train_file = validated_file(data, "preferences_train", stage_dir / "data")
        trainer = _setup_trainer(cfg, model, tokenizer, train_file, stage_dir / "checkpoints")
        hf_dir = train_and_save(trainer, tokenizer, stage_dir, sft.model_uri)
        if run is None:  # another process of a launch: it trained; the main one saves, measures, logs and reports
            return follower_result(STAGE, key)
        model_uri = log_hf_model(hf_dir, cfg, STAGE, kind="reward")
        eval_file = validated_file(data, "preferences_eval", stage_dir / "data")
        metrics = {
            **_held_out_metrics(cfg, hf_dir, eval_file, trainer.args.device, stage_dir),
            **_final_metrics(trainer),
        }
        mlflow.log_metrics(metrics)
        version = _register(cfg, run.info.run_id, model_uri, metrics, lineage)
        mlflow.set_tag(f"{TAG_PREFIX}registered_version", f"{cfg.registry.reward_name}/{version}")
    return StageResult(
        stage=STAGE,
        run_id=run.info.run_id,
        cache_key=key,
        model_uri=model_uri,
        metrics=metrics,
        outputs={"registered_name": cfg.registry.reward_name, "registered_version": version},
        output_hashes={"model": key},
        input_hashes=_input_hashes(sft, data),
    )


def _setup_model(cfg: PipelineConfig, sft: StageResult, stage_dir: Path):
    # The new score head starts the same on every run with this seed.
    return load_stage_reward_model(cfg, sft.model_uri, stage_dir / "sft", init_seed=cfg.reward.seed)


def _setup_trainer(
    cfg: PipelineConfig, model, tokenizer, train_file: Path, checkpoint_dir: Path
) -> RewardTrainer:
    format_prompt = prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
    args = RewardConfig(
        **training_arguments(cfg.reward, checkpoint_dir),
        max_length=cfg.validation.max_length,
        center_rewards_coefficient=cfg.reward.center_rewards_coefficient,
    )
    return RewardTrainer(
        model=model,
        args=args,
        train_dataset=preference_dataset(train_file, format_prompt, hard_negatives=cfg.reward.hard_negatives,
                                         rank_cut_short=cfg.reward.rank_cut_short),
        processing_class=tokenizer,
        peft_config=reward_peft_config(cfg.reward.lora, model.config.num_hidden_layers),
        callbacks=callbacks(STAGE, _TRAIN_METRIC_PREFIX),
    )


def _held_out_metrics(cfg: PipelineConfig, hf_dir: Path, eval_file: Path, device,
                      stage_dir: Path) -> dict[str, float]:
    """Accuracy and margin of the *saved* model (its adapters merged over their base) on the held-out pairs."""
    rows = read_rows(eval_file)
    chosen, rejected = saved_pair_scores(cfg, hf_dir, list(rows["prompt"]), list(rows["chosen"]),
                                         list(rows["rejected"]), device, stage_dir / "saved", cfg.reward.batch_size)
    accuracy, margin = preference_metrics(chosen, rejected)
    return {f"{STAGE}/accuracy": accuracy, f"{STAGE}/margin": margin, f"{STAGE}/eval_pairs": float(len(rows))}


def _final_metrics(trainer: RewardTrainer) -> dict[str, float]:
    return {
        f"{STAGE}/final_loss": float(final_log(trainer)["loss"]),
        f"{STAGE}/global_step": float(trainer.state.global_step),
        # TRL drops pairs longer than max_length: this is how many it trained on.
        f"{STAGE}/train_pairs": float(len(trainer.train_dataset)),
    }


def _register(
    cfg: PipelineConfig, run_id: str, model_uri: str, metrics: dict[str, float], lineage: Lineage
) -> str:
    """A new version of the reward model, tagged like a policy version: training lineage plus metrics."""
    tags = version_tags(STAGE, run_id, metrics, lineage)
    accuracy = metrics.get(f"{STAGE}/accuracy")
    description = f"Reward model on {cfg.name}'s preferences" + (
        f": held-out pair accuracy {accuracy:.2f}" if accuracy is not None else "")
    version = register_version(model_uri, cfg.registry.reward_name, cfg.registry.reward_alias, tags,
                               description=description)
    return str(version.version)
