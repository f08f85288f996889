"""Reading a logged model's weights back as training ended with them: full weights, or adapters merged in."""

from __future__ import annotations

from pathlib import Path

import torch

from models.loading import load_model_and_tokenizer
from models.reward import load_reward_model
from tasks.registry.hf_folders import model_chain


def merged_weights(uri: str, download_dir: Path, reward: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of the model behind `uri`, any LoRA adapters merged over their base."""
    chain = model_chain(uri, download_dir)
    load = load_reward_model if reward else load_model_and_tokenizer
    model, _ = load(chain[0], adapters=chain[1:])
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
