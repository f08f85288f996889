"""What the reward and cost stages share: the stage itself (train a scorer from the SFT model on the comparisons,
measure it on the held-out pairs, log it as a servable pyfunc, register it), their inputs' hashes, a sequence
classifier's LoRA config, and the saved model's scores on held-out pairs. Each stage says what makes it its
own in a `ScoringModel`: its trainer, its held-out measure, and the registered name and description."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import mlflow
import torch
from peft import LoraConfig, TaskType

from models.prompting import prompt_formatter
from models.reward import reward_scores
from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.core.tags import TAG_PREFIX
from tasks.core.training_sections import LoraSection
from tasks.data.conversations import response_text
from tasks.data.validated import validated_file
from tasks.registry.logged_models import load_stage_reward_model, log_hf_model
from tasks.registry.versions import register_version, version_tags
from tasks.run.contract import StageResult, follower_result, stage_run, work_dir
from tasks.training.trainer import final_log, peft_config, train_and_save


@dataclasses.dataclass(frozen=True)
class ScoringModel:
    """What makes a scoring stage its own."""

    stage: str
    sections: tuple[str, ...]
    seed: int  # the new score head starts the same on every run with this seed
    # (cfg, model, tokenizer, train file, checkpoint dir) -> a transformers Trainer
    setup_trainer: Callable
    # (cfg, saved model dir, held-out file, device, stage dir) -> metrics
    held_out_metrics: Callable[..., dict[str, float]]
    registered_name: str
    describe: Callable[[dict[str, float]], str]  # the registered version's description, from its metrics


def run_scoring_model_stage(model_kind: ScoringModel, cfg: PipelineConfig, lineage: Lineage, *, key: str,
                            sft: StageResult, data: StageResult) -> StageResult:
    """Train the scorer from the SFT model on the training comparisons (checkpoints resume as in SFT), measure
    the saved model on the held-out ones, log it as a pyfunc and register it under the reward alias."""
    stage = model_kind.stage
    if sft.model_uri is None:
        raise ValueError(f"stage {sft.stage} produced no model to train a {stage} model from")
    stage_dir = work_dir(cfg, stage, key)
    with stage_run(stage, cfg, lineage, cache_key=key, sections=model_kind.sections, parents={"sft": sft.model_uri},
                   code=f"tasks.{stage}") as run:
        model, tokenizer = load_stage_reward_model(cfg, sft.model_uri, stage_dir / "sft", init_seed=model_kind.seed)
        train_file = validated_file(data, "preferences_train", stage_dir / "data")
        trainer = model_kind.setup_trainer(cfg, model, tokenizer, train_file, stage_dir / "checkpoints")
        hf_dir = train_and_save(trainer, tokenizer, stage_dir, sft.model_uri)
        if run is None:  # another process of a launch: it trained; the main one saves, measures, logs and reports
            return follower_result(stage, key)
        model_uri = log_hf_model(hf_dir, cfg, stage, kind="reward")  # served as a reward model: one score a row
        eval_file = validated_file(data, "preferences_eval", stage_dir / "data")
        metrics = {**model_kind.held_out_metrics(cfg, hf_dir, eval_file, trainer.args.device, stage_dir),
                   f"{stage}/final_loss": float(final_log(trainer)["loss"]),
                   f"{stage}/global_step": float(trainer.state.global_step),
                   # TRL drops pairs longer than max_length: this is how many it trained on.
                   f"{stage}/train_pairs": float(len(trainer.train_dataset))}
        mlflow.log_metrics(metrics)
        version = register_version(model_uri, model_kind.registered_name, cfg.registry.reward_alias,
                                   version_tags(stage, run.info.run_id, metrics, lineage),
                                   description=model_kind.describe(metrics)).version
        mlflow.set_tag(f"{TAG_PREFIX}registered_version", f"{model_kind.registered_name}/{version}")
    return StageResult(stage=stage, run_id=run.info.run_id, cache_key=key, model_uri=model_uri, metrics=metrics,
                       outputs={"registered_name": model_kind.registered_name, "registered_version": str(version)},
                       output_hashes={"model": key}, input_hashes=preference_model_inputs(sft, data))


def preference_model_inputs(sft: StageResult, data: StageResult) -> dict[str, str]:
    """What a model trained on the comparisons from the SFT model depends on: its key's and lineage's inputs."""
    return {
        "sft": sft.output_hashes["model"],
        "preferences_train": data.output_hashes["preferences_train"],
        "preferences_eval": data.output_hashes["preferences_eval"],
    }


def reward_peft_config(lora: LoraSection, num_layers: int) -> LoraConfig | None:
    """LoRA for a sequence classifier: adapters on the targeted projections, the new score head in full.

    With the SEQ_CLS task type peft keeps a trainable copy of the score head (`modules_to_save`): the head is
    new and random, so it must train in full, not through a low-rank adapter. `merge_and_unload` then writes
    the trained head into the saved model.
    """
    config = peft_config(lora, num_layers)
    if config is None:
        return None
    return dataclasses.replace(config, task_type=TaskType.SEQ_CLS, modules_to_save=["score"])


def saved_pair_scores(cfg: PipelineConfig, hf_dir: Path, prompts: list, chosen: list, rejected: list, device,
                      download_dir: Path, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen scores, rejected scores), (N,) each, of the *saved* model (its adapters merged over their base):
    what later stages will load, not the trainer's copy."""
    model, tokenizer = load_stage_reward_model(cfg, str(hf_dir), download_dir)
    model.to(device)
    format_prompt = prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
    formatted = [format_prompt(p) for p in prompts]
    responses = [response_text(value) for value in [*chosen, *rejected]]
    scores = reward_scores(model, tokenizer, formatted + formatted, responses, batch_size)  # (2N,)
    return scores[: len(prompts)], scores[len(prompts):]
