"""What the reward and cost stages share: a sequence classifier's LoRA config, and the saved model's scores on
held-out pairs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from peft import LoraConfig, TaskType

from models.prompting import prompt_formatter
from models.reward import reward_scores
from tasks.core.config import PipelineConfig
from tasks.core.training_sections import LoraSection
from tasks.data.conversations import response_text
from tasks.registry.logged_models import load_stage_reward_model
from tasks.training.trainer import peft_config


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
