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


def save_hf_model(model, tokenizer, out_dir: Path, also: Callable[[Path], object] | None = None) -> Path:
    """The model (LoRA adapters merged into its weights) and its tokenizer as a Hugging Face folder, safetensors
    only, with its manifest; `also(folder)` writes any extra file into the folder before it is renamed into place."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
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
                       also: Callable[[Path], object] | None = None) -> Path:
    """What a training stage keeps: with LoRA, only the adapters and the name of the base they were trained on
    (megabytes, not a copy of the model); otherwise the whole model. Written aside and renamed into place."""
    if base_model is None or not is_peft_model(model):
        return save_hf_model(model, tokenizer, out_dir, also)

    def write(folder: Path) -> None:
        save_adapter(model, tokenizer, folder, base_model, revision)
        if also is not None:
            also(folder)
        write_manifest(folder)

    return write_atomically(out_dir, write)
