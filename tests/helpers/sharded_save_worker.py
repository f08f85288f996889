"""A worker of tests/test_sharded_save.py, started twice by torchrun (CPU, gloo): it shards a tiny Llama (with
LoRA adapters, without, or with LoRA under a value head as PPO trains it) over both processes with FSDP2, gathers
its weights on both with the stages' `gathered_weights`, saves them from the main process as the trainer stages
do (`save_trained_model`) or as PPO does (`_save_final`), and writes the unsharded model's own weights beside.

    python -m torch.distributed.run --nproc_per_node 2 -m tests.helpers.sharded_save_worker OUT_DIR lora|full|ppo
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from torch.distributed.fsdp import fully_shard

from models.saving import save_trained_model
from models.tiny import build_tiny_llama, train_tokenizer
from models.value_head import PolicyWithValueHead, ValueHead
from tasks.recipes.ppo import _save_final
from tasks.training.trainer import gathered_weights


def main(out: Path, variant: str) -> None:
    dist.init_process_group("gloo")
    tokenizer = train_tokenizer(["a tiny corpus for a tiny tokenizer"] * 4, vocab_size=300, model_max_length=64)
    model = build_tiny_llama(tokenizer, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=64, init_seed=0)
    if variant != "full":  # B initialised at random too: an all-zero adapter would compare equal by accident
        torch.manual_seed(1)
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    layers = model.model.layers if variant == "full" else model.get_base_model().model.layers
    if variant == "ppo":
        model = PolicyWithValueHead(model, ValueHead(32, init_seed=2))
    whole = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    sharded = sum(isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters())
    accelerator = Accelerator(cpu=True)
    weights = gathered_weights(accelerator, model)  # both processes: a collective
    if dist.get_rank() == 0:
        if variant == "ppo":  # PPO's own save, handed what its trainer holds: the accelerator and the model
            _save_final(SimpleNamespace(accelerator=accelerator, model=model), tokenizer, out / "saved", "tiny-base",
                        weights)
        else:
            save_trained_model(model, tokenizer, out / "saved", base_model=None if variant == "full" else "tiny-base",
                               state_dict=weights)
        save_file({name: tensor.contiguous() for name, tensor in whole.items()}, str(out / "whole.safetensors"))
        (out / "sharded_parameters.txt").write_text(str(sharded))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
