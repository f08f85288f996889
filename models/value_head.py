"""PPO's critic: a scalar value per token, either a head on the policy itself or a separate model.

`PolicyWithValueHead` is the policy with a linear value head on its last hidden state (one forward pass gives
both logits and values, as in Stiennon et al. 2020 and TRL's former `AutoModelForCausalLMWithValueHead`).
`SeparateCritic` is a second model whose trunk is initialised from the reward model (Ouyang et al. 2022) and
topped with a fresh value head, or the loaded reward model itself, frozen and shared, under a copy of its score
head: its first values are then the reward model's scores of each prefix, a baseline that knows the prompt from
the first step. Heads are saved and loaded as safetensors only.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, PreTrainedModel

from models.loading import DTYPES
from models.manifest import check_model_folder
from models.reward import load_reward_model


class ValueHead(nn.Module):
    """Linear(hidden_size, 1) read at every position: (B, T, H) -> (B, T).

    Weights start small, normal with std 1 / sqrt(H + 1) (the scalar-head init of Ziegler et al.'s code), the
    bias at 0; `init_seed` makes that reproducible without touching the global random state.
    """

    def __init__(self, hidden_size: int, *, init_seed: int | None = None) -> None:
        super().__init__()
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be positive, got {hidden_size}")
        self.hidden_size = hidden_size
        # Seeded: draw from a private copy of the CPU generator; unseeded: from the global one, as any layer does.
        with torch.random.fork_rng(devices=[]) if init_seed is not None else contextlib.nullcontext():
            if init_seed is not None:
                torch.manual_seed(init_seed)
            self.linear = nn.Linear(hidden_size, 1)
            nn.init.normal_(self.linear.weight, std=1.0 / math.sqrt(hidden_size + 1))
            nn.init.zeros_(self.linear.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states.to(self.linear.weight.dtype)  # (B, T, H): a bf16 trunk, a float32 head
        return self.linear(hidden_states).squeeze(-1)  # (B, T)


def _hidden_size(model: PreTrainedModel) -> int:
    """The trunk's hidden size; a peft model forwards `.config` to its base model, `get_text_config` unwraps
    multimodal configs."""
    return model.config.get_text_config().hidden_size


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _head_for(model: nn.Module, value_head: ValueHead | None, owner: str) -> ValueHead:
    """A fresh head sized to `model`, or the given one after checking that its size fits."""
    hidden_size = _hidden_size(model)
    if value_head is None:
        return ValueHead(hidden_size).to(_device(model))
    if value_head.hidden_size != hidden_size:
        raise ValueError(f"value head is sized for hidden_size={value_head.hidden_size}, "
                         f"the {owner}'s is {hidden_size}")
    return value_head


class PolicyWithValueHead(nn.Module):
    """The policy (a causal LM, or a peft model around one) with a value head on its last hidden state."""

    def __init__(self, policy: PreTrainedModel, value_head: ValueHead | None = None) -> None:
        super().__init__()
        self.value_head = _head_for(policy, value_head, "policy")
        self.policy = policy

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, T, V), values (B, T)) from one forward pass of the policy."""
        kwargs["output_hidden_states"] = True
        output = self.policy(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        values = self.value_head(output.hidden_states[-1])  # (B, T): the final (normed) hidden state
        return output.logits, values

    def generate(self, *args, **kwargs):
        """The policy's own `generate` (KV cache and all); the value head plays no part in sampling."""
        return self.policy.generate(*args, **kwargs)


class SeparateCritic(nn.Module):
    """A critic with its own trunk: a base model (no LM or score head) and a value head on its last hidden state."""

    def __init__(self, trunk: PreTrainedModel, value_head: ValueHead | None = None) -> None:
        super().__init__()
        self.value_head = _head_for(trunk, value_head, "trunk")
        self.trunk = trunk

    @classmethod
    def from_reward_model(
        cls,
        source: str | Path,
        *,
        revision: str | None = None,
        trust_remote_code: bool = False,
        dtype: str = "float32",
        init_seed: int | None = None,
        adapters: Sequence[str | Path] = (),
    ) -> SeparateCritic:
        """The trunk of a saved `*ForSequenceClassification` reward model (its score head is left out) under a
        fresh value head seeded by `init_seed`. Safetensors only. A LoRA reward model (`adapters` over `source`,
        see `models.adapters`) is merged as a whole first, then its trunk taken."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if adapters:
            scorer, _ = load_reward_model(source, revision=revision, trust_remote_code=trust_remote_code,
                                          dtype=dtype, adapters=adapters)
            trunk = scorer.base_model
        else:
            check_model_folder(source, trust_remote_code=trust_remote_code)
            trunk = AutoModel.from_pretrained(
                str(source),
                revision=revision,
                trust_remote_code=trust_remote_code,
                dtype=DTYPES[dtype],
                use_safetensors=True,
            )
        head = ValueHead(_hidden_size(trunk), init_seed=init_seed).to(_device(trunk))
        return cls(trunk, head)

    @classmethod
    def sharing_reward_model(cls, scorer: PreTrainedModel) -> SeparateCritic:
        """The loaded reward model itself as the critic: frozen, its trunk shared rather than loaded again, under a
        value head that starts as its score head. Only the head learns; a backward pass never enters the trunk."""
        scorer.requires_grad_(False)
        return cls(scorer.base_model, _value_head_from_score(scorer))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """values (B, T)."""
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self.value_head(hidden)  # (B, T)


def _value_head_from_score(scorer: PreTrainedModel) -> ValueHead:
    """A value head computing exactly what the reward model's one-label linear score head computes."""
    score = getattr(scorer, "score", None)
    if not isinstance(score, nn.Linear) or score.out_features != 1:
        raise ValueError(f"{type(scorer).__name__} has no one-label linear `score` head to start a critic from")
    head = ValueHead(score.in_features, init_seed=0).to(score.weight.device)  # seeded: leaves the global RNG be
    with torch.no_grad():
        head.linear.weight.copy_(score.weight.float())
        if score.bias is not None:
            head.linear.bias.copy_(score.bias.float())
    return head


def save_value_head(head: ValueHead, path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the head's weights (or `state_dict`, the head's gathered from its shards) to `path` as safetensors;
    returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = head.state_dict() if state_dict is None else state_dict
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in weights.items()}
    save_file(tensors, str(path), metadata={"format": "pt", "hidden_size": str(head.hidden_size)})
    return path


def load_value_head(path: Path, hidden_size: int) -> ValueHead:
    """A head for `hidden_size` with the weights saved at `path` (safetensors), in the dtype they were saved in.

    Raises ValueError, naming the file and both shapes, when the saved head was sized for another model.
    """
    path = Path(path)
    try:
        tensors = load_file(str(path))
    except SafetensorError as error:
        raise ValueError(f"{path}: not a safetensors value head ({error})") from error
    head = ValueHead(hidden_size)
    expected = {name: tuple(tensor.shape) for name, tensor in head.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    if set(found) != set(expected):
        raise ValueError(f"{path}: expected value head tensors {sorted(expected)}, found {sorted(found)}")
    for name, shape in expected.items():
        if found[name] != shape:
            raise ValueError(f"{path}: value head {name} has shape {found[name]}, expected {shape} "
                             f"for hidden_size={hidden_size}")
    head.to(tensors["linear.weight"].dtype).load_state_dict(tensors)
    return head
