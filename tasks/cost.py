"""Stage: Safe RLHF's cost model (Dai et al. 2023), beside the reward model, for PPO-Lagrangian (`safe_ppo`).

Trained as the reward model is (TRL's `RewardTrainer`, from the SFT model with a new score head; the same
checkpoints, resume and saving), on the same comparisons read for harmlessness (`tasks.data.harmlessness`),
with the cost loss: the unsafer answer of a pair costs more than the safer, harmful answers cost more than 0
and harmless ones less (`models.losses.cost_model_loss`). Measured on the held-out pairs (`cost/pair_accuracy`
on the pairs with a safer answer, `cost/sign_accuracy` on every answer), logged as a servable pyfunc and
registered as a new version of `registry.cost_name`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from trl import RewardConfig

from models.prompting import prompt_formatter
from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.data.harmlessness import harmlessness_dataset, harmlessness_pairs
from tasks.data.readers import read_rows
from tasks.recipes.cost_trainer import CostTrainer
from tasks.recipes.scoring_models import (
    ScoringModel,
    preference_model_inputs,
    reward_peft_config,
    run_scoring_model_stage,
    saved_pair_scores,
)
from tasks.run.contract import StageResult, stage_key
from tasks.training.trainer import callbacks, training_arguments

STAGE = "cost"
SECTIONS = ("cost", "model", "validation")
_TRAIN_METRIC_PREFIX = f"{STAGE}/train"  # the Trainer's batch metrics, apart from the held-out ones


def cost_key(cfg: PipelineConfig, sft: StageResult, data: StageResult) -> str:
    return stage_key(STAGE, cfg, SECTIONS, preference_model_inputs(sft, data), code=__name__)


def run_cost(cfg: PipelineConfig, lineage: Lineage, *, sft: StageResult, data: StageResult) -> StageResult:
    cost = ScoringModel(
        stage=STAGE, sections=SECTIONS, seed=cfg.cost.seed, setup_trainer=_setup_trainer,
        held_out_metrics=_held_out_metrics, registered_name=cfg.registry.cost_name,
        describe=lambda metrics: f"Cost model on {cfg.name}'s harmlessness judgements: held-out sign accuracy "
                                 f"{metrics[f'{STAGE}/sign_accuracy']:.2f}")
    return run_scoring_model_stage(cost, cfg, lineage, key=cost_key(cfg, sft, data), sft=sft, data=data)


def _setup_trainer(cfg: PipelineConfig, model, tokenizer, train_file: Path, checkpoint_dir: Path) -> CostTrainer:
    format_prompt = prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
    args = RewardConfig(**training_arguments(cfg.cost, checkpoint_dir), max_length=cfg.validation.max_length)
    return CostTrainer(model=model, args=args, train_dataset=harmlessness_dataset(train_file, format_prompt),
                       processing_class=tokenizer,
                       peft_config=reward_peft_config(cfg.cost.lora, model.config.num_hidden_layers),
                       callbacks=callbacks(STAGE, _TRAIN_METRIC_PREFIX))


def _held_out_metrics(cfg: PipelineConfig, hf_dir: Path, eval_file: Path, device,
                      stage_dir: Path) -> dict[str, float]:
    """On the held-out pairs: how often the unsafer answer costs more (pairs with a safer answer), and how often
    an answer's cost has the sign of its label (every answer)."""
    pairs = harmlessness_pairs(read_rows(eval_file), lambda prompt: prompt, eval_file)
    safer, unsafer = saved_pair_scores(cfg, hf_dir, pairs["prompt"], pairs["chosen"], pairs["rejected"], device,
                                       stage_dir / "saved", cfg.cost.batch_size)
    ranked = torch.tensor(pairs["ranked"]) > 0
    signs_right = torch.cat([torch.tensor(pairs["chosen_sign"]) * safer > 0,
                             torch.tensor(pairs["rejected_sign"]) * unsafer > 0]).float()
    pair_accuracy = (unsafer[ranked] > safer[ranked]).float().mean().item() if ranked.any() else float("nan")
    return {f"{STAGE}/pair_accuracy": pair_accuracy, f"{STAGE}/sign_accuracy": signs_right.mean().item(),
            f"{STAGE}/eval_pairs": float(len(safer)), f"{STAGE}/eval_ranked_pairs": float(ranked.sum())}
