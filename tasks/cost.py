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

import mlflow
import torch
from trl import RewardConfig

from models.prompting import prompt_formatter
from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.core.tags import TAG_PREFIX
from tasks.data.harmlessness import harmlessness_dataset, harmlessness_pairs
from tasks.data.readers import read_rows
from tasks.data.validated import validated_file
from tasks.recipes.cost_trainer import CostTrainer
from tasks.recipes.scoring_models import reward_peft_config, saved_pair_scores
from tasks.registry.logged_models import load_stage_reward_model, log_hf_model
from tasks.registry.versions import register_version, version_tags
from tasks.run.contract import StageResult, follower_result, stage_key, stage_run, work_dir
from tasks.training.trainer import callbacks, final_log, train_and_save, training_arguments

STAGE = "cost"
SECTIONS = ("cost", "model", "validation")
_TRAIN_METRIC_PREFIX = f"{STAGE}/train"  # the Trainer's batch metrics, apart from the held-out ones


def _input_hashes(sft: StageResult, data: StageResult) -> dict[str, str]:
    return {
        "sft": sft.output_hashes["model"],
        "preferences_train": data.output_hashes["preferences_train"],
        "preferences_eval": data.output_hashes["preferences_eval"],
    }


def cost_key(cfg: PipelineConfig, sft: StageResult, data: StageResult) -> str:
    return stage_key(STAGE, cfg, SECTIONS, _input_hashes(sft, data), code=__name__)


def run_cost(cfg: PipelineConfig, lineage: Lineage, *, sft: StageResult, data: StageResult) -> StageResult:
    if sft.model_uri is None:
        raise ValueError(f"stage {sft.stage} produced no model to train a cost model from")
    key = cost_key(cfg, sft, data)
    stage_dir = work_dir(cfg, STAGE, key)
    with stage_run(STAGE, cfg, lineage, cache_key=key, sections=SECTIONS, parents={"sft": sft.model_uri},
                   code=__name__) as run:
        model, tokenizer = load_stage_reward_model(cfg, sft.model_uri, stage_dir / "sft", init_seed=cfg.cost.seed)
        train_file = validated_file(data, "preferences_train", stage_dir / "data")
        trainer = _setup_trainer(cfg, model, tokenizer, train_file, stage_dir / "checkpoints")
        hf_dir = train_and_save(trainer, tokenizer, stage_dir, sft.model_uri)
        if run is None:  # another process of a launch: it trained; the main one saves, measures, logs and reports
            return follower_result(STAGE, key)
        model_uri = log_hf_model(hf_dir, cfg, STAGE, kind="reward")  # served like a reward model: one score a row
        eval_file = validated_file(data, "preferences_eval", stage_dir / "data")
        metrics = {**_held_out_metrics(cfg, hf_dir, eval_file, trainer.args.device, stage_dir),
                   f"{STAGE}/final_loss": float(final_log(trainer)["loss"]),
                   f"{STAGE}/global_step": float(trainer.state.global_step),
                   f"{STAGE}/train_pairs": float(len(trainer.train_dataset))}
        mlflow.log_metrics(metrics)
        version = _register(cfg, run.info.run_id, model_uri, metrics, lineage)
        mlflow.set_tag(f"{TAG_PREFIX}registered_version", f"{cfg.registry.cost_name}/{version}")
    return StageResult(stage=STAGE, run_id=run.info.run_id, cache_key=key, model_uri=model_uri, metrics=metrics,
                       outputs={"registered_name": cfg.registry.cost_name, "registered_version": version},
                       output_hashes={"model": key}, input_hashes=_input_hashes(sft, data))


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


def _register(cfg: PipelineConfig, run_id: str, model_uri: str, metrics: dict[str, float], lineage: Lineage) -> str:
    """A new version of the cost model, tagged like the reward model's: training lineage plus metrics."""
    accuracy = metrics[f"{STAGE}/sign_accuracy"]
    version = register_version(model_uri, cfg.registry.cost_name, cfg.registry.reward_alias,
                               version_tags(STAGE, run_id, metrics, lineage),
                               description=f"Cost model on {cfg.name}'s harmlessness judgements: held-out sign "
                                           f"accuracy {accuracy:.2f}")
    return str(version.version)
