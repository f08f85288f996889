"""Reward models: load a one-output sequence classifier, score (prompt, response) pairs, measure preferences.

A reward model is `AutoModelForSequenceClassification` with `num_labels=1`: the score head reads the hidden
state of the last non-pad token. Scoring tokenizes exactly as TRL's `RewardTrainer` does in training, so a
model is measured on the inputs it learned from:

    ids = tokenizer(prompt + response + eos)["input_ids"]  # eos appended unless the response ends with it

and rows are right-padded with the model's pad id (positions start at 0 on every row, as in training).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from models.adapters import merge_adapters
from models.loading import DTYPES, load_tokenizer
from models.manifest import check_model_folder
from models.timing import LOAD, timed


@timed(LOAD)
def load_reward_model(
    source: str | Path,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    init_seed: int | None = None,
    adapters: Sequence[str | Path] = (),
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer): `AutoModelForSequenceClassification` with one label, safetensors only.

    From a causal LM checkpoint (the SFT model) the score head is new and randomly initialised; `init_seed`
    makes that initialisation reproducible without touching the global random state. A model without a pad
    id gets the tokenizer's (its EOS when it has no pad token, as TRL does). `adapters` (LoRA folders, see
    `models.adapters`) are merged in order; a reward model's own adapter carries its trained score head.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    check_model_folder(source, trust_remote_code=trust_remote_code)
    with torch.random.fork_rng(devices=[]):
        if init_seed is not None:
            torch.manual_seed(init_seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(source),
            revision=revision,
            trust_remote_code=trust_remote_code,
            dtype=DTYPES[dtype],
            num_labels=1,
            use_safetensors=True,
        )
    model = merge_adapters(model, adapters, trust_remote_code=trust_remote_code)
    tokenizer = (load_tokenizer(adapters[-1], trust_remote_code=trust_remote_code) if adapters
                 else load_tokenizer(source, revision=revision, trust_remote_code=trust_remote_code))
    text_config = model.config.get_text_config()
    if text_config.pad_token_id is None:
        # The score head pools the last non-pad token: without a pad id a padded batch cannot be scored.
        text_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def reward_input_ids(tokenizer, prompt: str, response: str) -> list[int]:
    """Token ids of one (formatted prompt, response) pair, as TRL's `RewardTrainer` builds them for training.

    TRL (standard, non-conversational format) appends the EOS *text* to the response unless it already ends
    with it, concatenates prompt and response as strings, and tokenizes with the tokenizer's own special-token
    rules (a BOS where the tokenizer adds one).
    """
    eos = tokenizer.eos_token
    if not response.endswith(eos):
        response = response + eos
    return tokenizer(text=prompt + response)["input_ids"]


@torch.no_grad()
def reward_scores(
    model, tokenizer, prompts: list[str], responses: list[str], batch_size: int
) -> torch.Tensor:
    """Scalar reward of each (formatted prompt, response) pair: a float32 CPU tensor of shape (N,).

    Prompts must already be formatted (see `models.prompting.prompt_formatter`). Rows are right-padded with
    the model's pad id whatever the tokenizer's `padding_side`: the score head pools the rightmost non-pad
    token, and training (TRL's collator) right-pads too.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pad_id = model.config.get_text_config().pad_token_id
    if pad_id is None:
        raise ValueError("the reward model has no pad_token_id: cannot find the last token of a padded row")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = zip(prompts[start : start + batch_size], responses[start : start + batch_size])
            rows = [reward_input_ids(tokenizer, prompt, response) for prompt, response in batch]
            input_ids, attention_mask = _right_pad(rows, pad_id)  # (B, T), (B, T)
            logits = model(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
            ).logits  # (B, 1)
            scores.append(logits.squeeze(-1).float().cpu())  # (B,)
    finally:
        model.train(was_training)
    return torch.cat(scores) if scores else torch.zeros(0)


def _right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


def preference_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean margin) of a reward model on preference pairs; both inputs have shape (N,).

    Under the Bradley–Terry model (Bradley & Terry 1952), which reward training fits, the probability that
    the chosen response beats the rejected one is sigmoid(r_chosen - r_rejected). Accuracy is the share of
    pairs where that probability exceeds 1/2, i.e. r_chosen > r_rejected strictly (a tie counts as wrong);
    the margin is the mean of r_chosen - r_rejected. Equivalent loop:
    accuracy = sum(c > r for c, r in pairs) / N; margin = sum(c - r for c, r in pairs) / N.
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1:
        raise ValueError(
            f"expected two 1-D tensors of the same shape, got {tuple(chosen_rewards.shape)} "
            f"and {tuple(rejected_rewards.shape)}"
        )
    if chosen_rewards.numel() == 0:
        raise ValueError("preference_metrics needs at least one pair")
    differences = chosen_rewards.double() - rejected_rewards.double()  # (N,)
    accuracy = (differences > 0).double().mean()
    return float(accuracy), float(differences.mean())
