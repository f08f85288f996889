"""Stage: supervised fine-tuning on demonstrations with TRL's `SFTTrainer` (loss on completions, optional LoRA).

Checkpoints every `sft.save_steps` go to the stage's work folder, keyed by its inputs; a rerun after a crash
resumes from the last complete one.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from models.prompting import prompt_formatter
from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.data.conversations import sft_examples
from tasks.data.readers import read_rows
from tasks.data.validated import validated_file
from tasks.registry.logged_models import load_stage_model, log_hf_model
from tasks.run.contract import StageResult, follower_result, stage_key, stage_run, work_dir
from tasks.training.trainer import (
    callbacks,
    final_log,
    peft_config,
    train_and_save,
    training_arguments,
)

STAGE = "sft"
SECTIONS = ("sft", "model", "validation")


def _input_hashes(base: StageResult, data: StageResult) -> dict[str, str]:
    return {"base": base.output_hashes["model"], "sft_train": data.output_hashes["sft_train"]}


def sft_key(cfg: PipelineConfig, base: StageResult, data: StageResult) -> str:
    return stage_key(STAGE, cfg, SECTIONS, _input_hashes(base, data), code=__name__)


def run_sft(cfg: PipelineConfig, lineage: Lineage, *, base: StageResult, data: StageResult) -> StageResult:
    key = sft_key(cfg, base, data)
    stage_dir = work_dir(cfg, STAGE, key)
    with stage_run(STAGE, cfg, lineage, cache_key=key, sections=SECTIONS, code=__name__,
                   parents={"base": base.model_uri}) as run:
        model, tokenizer = load_stage_model(cfg, base.model_uri, stage_dir / "base")
        train_file = validated_file(data, "sft_train", stage_dir / "data")
        trainer = _setup_trainer(cfg, model, tokenizer, train_file, stage_dir / "checkpoints")
        hf_dir = train_and_save(trainer, tokenizer, stage_dir, base.model_uri, _revision(cfg, base.model_uri))
        if run is None:  # another process of a launch: it trained; the main one saves, logs and reports
            return follower_result(STAGE, key)
        model_uri = log_hf_model(hf_dir, cfg, STAGE)
        metrics = _final_metrics(trainer)
        mlflow.log_metrics(metrics)
    return StageResult(
        stage=STAGE,
        run_id=run.info.run_id,
        cache_key=key,
        model_uri=model_uri,
        metrics=metrics,
        output_hashes={"model": key},
        input_hashes=_input_hashes(base, data),
    )


def _setup_trainer(cfg: PipelineConfig, model, tokenizer, train_file: Path, checkpoint_dir: Path) -> SFTTrainer:
    format_prompt = prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)
    prompts, completions = sft_examples(read_rows(train_file))  # `messages`, or prompt/completion
    dataset = Dataset.from_dict({"prompt": [format_prompt(p) for p in prompts], "completion": completions})
    args = SFTConfig(
        **training_arguments(cfg.sft, checkpoint_dir),
        max_length=cfg.validation.max_length,
        completion_only_loss=cfg.sft.completion_only_loss,
        packing=False,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config(cfg.sft.lora, model.config.num_hidden_layers),
        callbacks=callbacks(STAGE),
    )


def _revision(cfg: PipelineConfig, uri: str) -> str | None:
    return cfg.model.revision if uri == cfg.model.pretrained else None  # the hub model is the base


def _final_metrics(trainer: SFTTrainer) -> dict[str, float]:
    return {"sft/final_loss": float(final_log(trainer)["loss"]), "sft/global_step": float(trainer.state.global_step)}
