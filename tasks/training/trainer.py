"""What the trainer-based stages (SFT, reward, DPO) share: arguments, LoRA, resume and the final save."""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import torch
from accelerate.utils import DistributedType
from peft import LoraConfig
from transformers import TrainerCallback

from models.checkpoints import (
    MarkCompleteCheckpoints,
    StepFailpoint,
    last_complete_checkpoint,
    remove_incomplete_checkpoints,
)
from models.saving import gathered_state_dict, save_trained_model
from models.timing import TRAIN, phase
from tasks.core.errors import ConfigError
from tasks.core.tags import RESUMED_FROM_TAG
from tasks.core.training_sections import LoraSection, TrainingSection
from tasks.run.ranks import is_main_process

log = logging.getLogger(__name__)


def training_arguments(train: TrainingSection, output_dir: Path) -> dict[str, Any]:
    """Keyword arguments common to every TRL config class, from our `TrainingSection`."""
    bf16 = computes_in_bf16(train)
    return {
        "output_dir": str(output_dir),
        "num_train_epochs": train.epochs,
        "max_steps": train.max_steps,
        "learning_rate": train.learning_rate,
        "lr_scheduler_type": train.lr_scheduler,
        "warmup_steps": train.warmup_ratio,  # a float below 1 is read as a share of the total steps
        "weight_decay": train.weight_decay,
        "per_device_train_batch_size": train.batch_size,
        "per_device_eval_batch_size": train.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "max_grad_norm": train.max_grad_norm,
        "save_strategy": "steps",
        "save_steps": train.save_steps,
        "save_total_limit": 2,  # keep the previous checkpoint while the newest one is being written
        "logging_steps": train.logging_steps,
        "seed": train.seed,
        "data_seed": train.seed,
        "report_to": "none",  # MLflow logging is ours: metrics go to the stage's child run
        "bf16": bf16,
        "use_cpu": bf16 and not torch.cuda.is_available(),  # else transformers refuses bf16 without a GPU
        "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": torch.cuda.is_available(),
        "disable_tqdm": True,
    }


def computes_in_bf16(train: TrainingSection) -> bool:
    """Whether the stage trains in bf16 mixed precision: `TrainingSection.bf16`, or where it is None, a launcher
    that asks for bf16 (`accelerate launch --mixed_precision bf16` sets ACCELERATE_MIXED_PRECISION, which
    transformers follows) or a GPU that supports it. A stage set to float32 under a bf16 launcher is an error:
    transformers would train it in bf16 whatever the stage says."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if train.bf16 is False and launcher != "no":
        raise ConfigError(f"bf16: false, but the launcher asks for mixed precision {launcher!r} "
                          "(ACCELERATE_MIXED_PRECISION): launch with --mixed_precision no, or drop bf16: false")
    if train.bf16 is not None:
        return train.bf16
    return launcher == "bf16" or (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def peft_config(lora: LoraSection, num_layers: int) -> LoraConfig | None:
    """peft's LoRA config for a model with `num_layers` decoder layers, or None when LoRA is off."""
    if not lora.enabled:
        return None
    if lora.top_layers is not None and lora.top_layers > num_layers:
        raise ConfigError(f"lora.top_layers={lora.top_layers}, but the model has only {num_layers} layers")
    top = {} if lora.top_layers is None else {
        "layers_to_transform": list(range(num_layers - lora.top_layers, num_layers)), "layers_pattern": "layers"}
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
        **top,
    )


def callbacks(stage: str, metric_prefix: str | None = None) -> list:
    return [MarkCompleteCheckpoints(), MlflowMetricsCallback(metric_prefix or stage), StepFailpoint(stage)]


def train_and_save(trainer, tokenizer, stage_dir: Path, base_model: str, revision: str | None = None,
                   before_save=None) -> Path | None:
    """The recipe's train and save steps: train, resuming from the last complete checkpoint in
    `<stage_dir>/checkpoints`, then save to `<stage_dir>/hf_model`: with LoRA the adapters, naming `base_model`
    (the URI the stage started from) as their base; otherwise the whole model. Returns that folder.
    `before_save(trainer)` runs between the two (an RL stage's monitors put back the last healthy weights).

    Under a multi-process launch every process trains and joins the gathering of sharded weights (FSDP2), and the
    main one alone saves: the others get None."""
    _train_resuming(trainer, stage_dir / "checkpoints")
    if before_save is not None:
        before_save(trainer)
    weights = gathered_weights(trainer.accelerator, trainer.model_wrapped)
    if not is_main_process():
        return None
    return save_trained_model(trainer.model, tokenizer, stage_dir / "hf_model", base_model, revision,
                              state_dict=weights)


def gathered_weights(accelerator, model) -> dict | None:
    """The trained model's full weights where they are sharded (FSDP2, ZeRO-3), gathered on every process into the
    main one's memory; None where every process holds them whole (one process, DDP). `model` is what the
    accelerator prepared (a DeepSpeed engine under DeepSpeed). Every process must call it."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3:
        return accelerator.get_state_dict(model)  # 16-bit weights (zero3_save_16bit_model); untested: needs GPUs
    return gathered_state_dict(model)


def _train_resuming(trainer, checkpoint_dir: Path) -> int | None:
    """Train, resuming from the last *complete* checkpoint if an earlier attempt died. Returns the resumed step."""
    main = is_main_process()  # under a multi-process launch one process tidies and tracks for all
    for removed in remove_incomplete_checkpoints(checkpoint_dir) if main else []:
        log.warning("Ignoring half-written checkpoint %s", removed)
    resume_from = last_complete_checkpoint(checkpoint_dir)
    resumed_step = int(resume_from.name.split("-")[-1]) if resume_from else None
    if resume_from is not None:
        log.info("Resuming from complete checkpoint %s", resume_from)
        if main:
            mlflow.set_tag(RESUMED_FROM_TAG, str(resumed_step))
    with _quiet_about_tied_weights(trainer.model), phase(TRAIN):  # TRL's own generation (RLOO) counts as training
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return resumed_step


_MISSING_KEYS = re.compile(r"There were missing keys in the checkpoint model loaded: (\[.*\])\.")


class _TiedWeightsAreNotMissing(logging.Filter):
    """Drops the Trainer's "missing keys" warning on resume when every key it names is an output embedding tied
    to the input embeddings (the tiny Llama's lm_head). A checkpoint stores a tied tensor once, and loading the
    input embeddings fills both, so the weights are right and the warning would only mislead. Any other
    missing key keeps the warning."""

    def __init__(self, tied: set[str]):
        super().__init__()
        self.tied = tied

    def filter(self, record: logging.LogRecord) -> bool:
        found = _MISSING_KEYS.fullmatch(record.getMessage())
        return not (found and set(re.findall(r"'([^']+)'", found.group(1))) <= self.tied)


def _tied_output_keys(model) -> set[str]:
    """The state-dict name of the output embedding weight when it is the input embedding's very tensor."""
    output = model.get_output_embeddings()  # None for a reward model: it has a score head, not an lm_head
    if output is None or output.weight is not model.get_input_embeddings().weight:
        return set()
    return {f"{name}.weight" for name, module in model.named_modules() if module is output}


@contextmanager
def _quiet_about_tied_weights(model):
    """The Trainer's warnings, less the misleading one about tied weights (no tie: nothing is filtered)."""
    logger = logging.getLogger("transformers.trainer")  # where Trainer._issue_warnings_after_load logs
    quiet = _TiedWeightsAreNotMissing(_tied_output_keys(model))
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def final_log(trainer) -> dict[str, float]:
    """The last logged training entry, with `loss` falling back to the run's mean `train_loss` when no
    step was logged (runs shorter than `logging_steps`)."""
    history = trainer.state.log_history
    logged = [entry for entry in history if "loss" in entry]
    last = dict(logged[-1]) if logged else {}
    if "loss" not in last:
        last["loss"] = next((entry["train_loss"] for entry in reversed(history) if "train_loss" in entry),
                            float("nan"))
    return last


class MlflowMetricsCallback(TrainerCallback):
    """Sends the Trainer's logged scalars to the active MLflow run as `<prefix>/<name>` at the global step."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            scalars = {f"{self.prefix}/{k}": float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            mlflow.log_metrics(scalars, step=state.global_step, synchronous=False)  # off the training loop
        return control

    def on_train_end(self, args, state, control, **kwargs):
        mlflow.flush_async_logging()
        return control
