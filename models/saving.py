"""Saving model folders so that a crash never leaves half of one behind.

Everything is written beside its final name and renamed into place once complete: a reader sees either the
old file or folder, or the whole new one. A model folder's last file is its manifest (`models.manifest`): the
sha256 of everything in it, which loading checks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor

from models.adapters import is_peft_model, save_adapter
from models.manifest import write_manifest


def write_atomically(final: Path, write: Callable[[Path], object]) -> Path:
    """Call `write(partial)` to write a file or folder at a temporary sibling path, then rename it to `final`."""
    final = Path(final)
    partial = partial_path(final)
    _remove(partial)  # a leftover of an earlier crash
    final.parent.mkdir(parents=True, exist_ok=True)
    write(partial)
    if final.is_dir():  # os.replace cannot replace a non-empty folder
        shutil.rmtree(final)
    os.replace(partial, final)
    return final


def partial_path(final: Path) -> Path:
    """Where `write_atomically` writes `final` before renaming it."""
    return final.with_name(final.name + ".partial")


def gathered_state_dict(model) -> dict[str, torch.Tensor] | None:
    """The full weights of a model whose parameters are sharded across processes (FSDP2: DTensor parameters),
    gathered into the main process's memory (the others get an empty dict); None for a model that is not
    sharded, whose parameters are already whole. Every process must call it: the gather is a collective, and a
    process that does not join leaves the others waiting for ever."""
    if not any(isinstance(parameter, DTensor) for parameter in model.parameters()):
        return None
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def submodule_weights(state_dict: dict[str, torch.Tensor] | None, prefix: str) -> dict[str, torch.Tensor] | None:
    """The entries of a gathered `state_dict` under one submodule (`prefix`, e.g. "policy."), named as that
    submodule's own state dict names them; None for None (weights that were never sharded)."""
    if state_dict is None:
        return None
    found = {name.removeprefix(prefix): tensor for name, tensor in state_dict.items() if name.startswith(prefix)}
    if not found:  # saving an empty dict would write an empty model without a word
        raise ValueError(f"no weights under {prefix!r} in the gathered state dict (its names start with "
                         f"{sorted({name.split('.')[0] for name in state_dict})})")
    return found


def save_hf_model(model, tokenizer, out_dir: Path, also: Callable[[Path], object] | None = None,
                  state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """The model (LoRA adapters merged into its weights) and its tokenizer as a Hugging Face folder, safetensors
    only, with its manifest; `also(folder)` writes any extra file into the folder before it is renamed into place.
    `state_dict`: the weights to write, when the model's own are sharded (`gathered_state_dict`)."""
    if hasattr(model, "merge_and_unload"):
        if state_dict is not None:
            raise ValueError("a sharded LoRA model is saved as its adapters (save_trained_model with a base model)")
        model = model.merge_and_unload()

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(folder)
        if also is not None:
            also(folder)
        write_manifest(folder)

    return write_atomically(out_dir, write)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def save_trained_model(model, tokenizer, out_dir: Path, base_model: str | None, revision: str | None = None,
                       also: Callable[[Path], object] | None = None,
                       state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """What a training stage keeps: with LoRA, only the adapters and the name of the base they were trained on
    (megabytes, not a copy of the model); otherwise the whole model. Written aside and renamed into place.
    `state_dict`: the model's weights gathered from the processes it is sharded over (`gathered_state_dict`)."""
    if base_model is None or not is_peft_model(model):
        return save_hf_model(model, tokenizer, out_dir, also, state_dict)

    def write(folder: Path) -> None:
        save_adapter(model, tokenizer, folder, base_model, revision, state_dict)
        if also is not None:
            also(folder)
        write_manifest(folder)

    return write_atomically(out_dir, write)
