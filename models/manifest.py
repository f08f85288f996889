"""Model folders are checked before anything in them is loaded: a sha256 manifest, no pickles, no unasked code.

Saving a model folder (and logging one) writes `alignflow-manifest.json`, the sha256 of every file in it.
Loading a folder that carries one checks it first and refuses a file that changed, went missing or was added:
an extra weight shard, chat template or code file changes what loads as surely as an edited one. A folder
without a manifest (a user's own `model.pretrained` folder) loads as before, but whatever the folder:

- pickled files (`.bin`, `.pt`, ...) are refused before anything reads them, since unpickling can run any code;
- a config that asks transformers to import code shipped with the model (`auto_map`) is refused unless
  `trust_remote_code` is on.

A hub id is left to `from_pretrained`: the loaders ask it for safetensors only, and it runs no model code
unless `trust_remote_code` is on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "alignflow-manifest.json"
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
_CODE_CONFIGS = ("config.json", "tokenizer_config.json")  # where a folder names the code it wants imported


class ModelIntegrityError(ValueError):
    """A model folder that must not be loaded; the message names the file and what is wrong with it."""


def check_model_folder(source: str | Path, *, trust_remote_code: bool = False) -> bool:
    """What every load runs before `from_pretrained`: refuse pickles, unasked code and a broken manifest.
    Returns whether `source` is a folder with a manifest (which it matches)."""
    folder = Path(source)
    if not folder.is_dir():
        return False  # a hub id
    refuse_pickle_weights(folder)
    if not trust_remote_code:
        refuse_remote_code(folder)
    return verify_manifest(folder)


def write_manifest(folder: str | Path) -> Path:
    """Record the sha256 of every file in `folder` in its manifest (written aside, renamed); returns its path."""
    folder = Path(folder)
    refuse_pickle_weights(folder)
    manifest = {"files": {name: _sha256(folder / name) for name in _files(folder)}}
    path, partial = folder / MANIFEST, folder / f".{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def verify_manifest(folder: str | Path) -> bool:
    """Whether `folder` has a manifest; raises ModelIntegrityError, naming each file, if it does not match it."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        return False
    try:
        expected = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise ModelIntegrityError(f"{path}: not a readable manifest ({error!r})") from None
    found = set(_files(folder))
    problems = [f"{folder / name}: listed in the manifest but missing" for name in sorted(set(expected) - found)]
    problems += [f"{folder / name}: file not in the manifest" for name in sorted(found - set(expected))]
    for name in sorted(found & set(expected)):  # hashed last: the cheap checks above fail fast
        if (digest := _sha256(folder / name)) != expected[name]:
            problems.append(f"{folder / name}: sha256 differs from the manifest written when the model was saved "
                            f"(expected {expected[name]}, found {digest})")
    if problems:
        raise ModelIntegrityError(f"{folder}: refusing to load a model folder that no longer matches its manifest "
                                  f"({path.name}):\n  " + "\n  ".join(problems))
    return True


def refuse_pickle_weights(folder: str | Path) -> None:
    """Raise ModelIntegrityError naming any pickle-based file in `folder`; nothing is opened."""
    pickles = sorted(str(Path(folder) / name) for name in _files(folder) if Path(name).suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelIntegrityError(f"{', '.join(pickles)}: pickle-based files are refused, since loading one can run "
                                  "arbitrary code; convert the weights to safetensors")


def refuse_remote_code(folder: str | Path) -> None:
    """Raise ModelIntegrityError if a config in `folder` asks transformers to import code shipped with it."""
    for name in _CODE_CONFIGS:
        path = Path(folder) / name
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if isinstance(config, dict) and config.get("auto_map"):
            raise ModelIntegrityError(
                f"{path}: asks to run code shipped with the model (auto_map {config['auto_map']}), and "
                "trust_remote_code is off; turn on model.trust_remote_code only for code you trust")


def _files(folder: str | Path) -> list[str]:
    """Every file under `folder` but the manifest, as sorted POSIX paths relative to it."""
    folder = Path(folder)
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                  if path.is_file() and path.name not in (MANIFEST, f".{MANIFEST}.partial"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):  # 1 MB at a time: models are hundreds of MB
            digest.update(chunk)
    return digest.hexdigest()
