"""Stage: a reward model trained on preference pairs with TRL's `RewardTrainer` (Bradley–Terry loss).

The reward model starts from the SFT model with a new scalar score head. It is measured on the held-out
preference pairs (`reward/accuracy`, `reward/margin`), logged as a servable pyfunc and registered as a new
version of `registry.reward_name`, tagged with its lineage and metrics. Checkpoints resume as in SFT.
"""

from __future__ import annotations

from pathlib import Path

from trl import RewardConfig, RewardTrainer

from models.prompting import prompt_formatter
from models.reward import preference_metrics
from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.data.preferences import preference_dataset
from tasks.data.readers import read_rows
from tasks.recipes.scoring_models import (
    ScoringModel,
    preference_model_inputs,
    reward_peft_config,
    run_scoring_model_stage,
    saved_pair_scores,
)
from tasks.run.contract import StageResult, stage_key
from tasks.training.trainer import callbacks, training_arguments

STAGE = "reward"
SECTIONS = ("reward", "model", "validation")
# The Trainer's own logs (loss, accuracy and margin on training batches) go under reward/train/, so they never
# mix with the held-out reward/accuracy and reward/margin in one MLflow metric.
_TRAIN_METRIC_PREFIX = f"{STAGE}/train"


def reward_key(cfg: PipelineConfig, sft: StageResult, data: StageResult) -> str:
    return stage_key(STAGE, cfg, SECTIONS, preference_model_inputs(sft, data), code=__name__)


def run_reward(cfg: PipelineConfig, lineage: Lineage, *, sft: StageResult, data: StageResult) -> StageResult:
    reward = ScoringModel(
        stage=STAGE, sections=SECTIONS, seed=cfg.reward.seed, setup_trainer=_setup_trainer,
        held_out_metrics=_held_out_metrics, registered_name=cfg.registry.reward_name,
        describe=lambda metrics: f"Reward model on {cfg.name}'s preferences: held-out pair accuracy "
                                 f"{metrics[f'{STAGE}/accuracy']:.2f}")
    return run_scoring_model_stage(reward, cfg, lineage, key=reward_key(cfg, sft, data), sft=sft, data=data)


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
