"""Reference log-probabilities for DPO, computed once and kept as a versioned MLflow artifact.

DPO compares the policy's log-probabilities of each chosen and rejected response with the frozen reference's.
The reference numbers depend only on the reference weights, the preference data, the tokenization and the
precision they are computed in (bf16 mixed precision computes them in bf16, as the policy's), so they are keyed
by exactly those and the code that computes them (`tasks.core.code_version`: this module,
what it imports, and the versions of torch, transformers and TRL). A DPO run whose key matches an earlier run's
downloads that run's artifact instead of running the reference model over the whole dataset; any other key
computes afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import mlflow
import torch
from datasets import Dataset, load_from_disk
from safetensors.torch import load_file, save_file
from trl import DPOTrainer

from tasks.core.code_version import code_version
from tasks.core.hashing import md5_file
from tasks.core.tags import TAG_PREFIX
from tasks.run.ranks import is_main_process

log = logging.getLogger(__name__)

KEY_TAG = f"{TAG_PREFIX}ref_logps_key"
ARTIFACT_DIR = "reference_logps"
COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


def folder_hash(folder: Path, patterns: tuple[str, ...]) -> str:
    """md5 over the named files (and globs) of a model folder, in a fixed order."""
    digest = hashlib.md5()
    for pattern in patterns:
        for path in sorted(folder.glob(pattern)):
            digest.update(path.name.encode())
            digest.update(md5_file(path).encode())
    return digest.hexdigest()


def reference_key(reference_chain: list[str], data_md5: str, tokenization: dict, precision: str) -> dict[str, str]:
    """What the cache is keyed by (three hashes and the `precision`, "bf16" or "fp32"), and their combination
    with the code version under `key`.

    `reference_chain` is the reference model's folders: full weights, then any adapters merged over them (see
    `models.adapters`); the tokenizer is the last folder's. `tokenization` holds what turns rows into token ids
    besides the tokenizer files (max_length, prompt format).
    """
    folders = [Path(folder) for folder in reference_chain]
    weights = "".join(folder_hash(folder, ("config.json", "adapter_config.json", "*.safetensors"))
                      if folder.is_dir() else str(folder) for folder in folders)  # a hub id stands for itself
    parts = {
        "reference_model": hashlib.md5(weights.encode()).hexdigest() if len(folders) > 1 else weights,
        "data": data_md5,
        "tokenizer": hashlib.md5(
            (folder_hash(folders[-1], _TOKENIZER_FILES) + json.dumps(tokenization, sort_keys=True)).encode()
        ).hexdigest(),
        "precision": precision,
    }
    keyed = {**parts, "code": code_version(__name__)}
    parts["key"] = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()
    return parts


class ReferenceLogpsCache:
    """Looks up and stores reference log-probs for one key in the active MLflow experiment."""

    def __init__(self, key: str, download_dir: Path):
        self.key = key
        self.download_dir = download_dir
        self.hit_run_id: str | None = None

    def _artifact(self, name: str) -> str:
        return f"{ARTIFACT_DIR}/{name}.safetensors"

    def load(self, name: str) -> dict[str, torch.Tensor] | None:
        for run in mlflow.search_runs(filter_string=f"tags.`{KEY_TAG}` = '{self.key}'", output_format="list",
                                      order_by=["attributes.start_time DESC"]):
            artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, ARTIFACT_DIR)}
            if self._artifact(name) in artifacts:
                local = mlflow.artifacts.download_artifacts(
                    run_id=run.info.run_id, artifact_path=self._artifact(name), dst_path=str(self.download_dir)
                )
                self.hit_run_id = run.info.run_id
                return load_file(local)
        return None

    def save(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        """Log them to the active run; under a multi-process launch every process computed them, the main one
        logs them."""
        if not is_main_process():
            return
        path = self.download_dir / f"{name}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        mlflow.log_artifact(str(path), artifact_path=ARTIFACT_DIR)
        mlflow.set_tag(KEY_TAG, self.key)


class CachedReferenceDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer whose reference pass goes through `ReferenceLogpsCache`."""

    def __init__(self, *args, reference_cache: ReferenceLogpsCache, **kwargs):
        self.reference_cache = reference_cache  # set first: the parent __init__ runs the precompute
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        cached = self.reference_cache.load(name)
        if cached is not None and len(cached[COLUMNS[0]]) == len(dataset):
            log.info("Reusing reference log-probs for %s from run %s", name, self.reference_cache.hit_run_id)
            for column in COLUMNS:
                dataset = dataset.add_column(column, cached[column].tolist())
            return dataset
        if self.accelerator.num_processes > 1:
            dataset = self._on_disk(dataset, name)
        dataset = super()._precompute_ref_logps(dataset, name, batch_size)
        self.reference_cache.save(name, {c: torch.tensor(dataset[c], dtype=torch.float32) for c in COLUMNS})
        return dataset

    def _on_disk(self, dataset: Dataset, name: str) -> Dataset:
        """The dataset saved by the main process and loaded back by every process, for TRL's precompute under
        several processes: the main process writes the log-probs beside the dataset's files for the others to read.
        An in-memory dataset has no files, so each process would look for them in its own temporary folder (and
        under its own random name) and the others fail with FileNotFoundError (TRL 1.16)."""
        folder = self.reference_cache.download_dir / f"{name}_dataset"
        if self.accelerator.is_main_process:
            dataset.save_to_disk(str(folder))
        self.accelerator.wait_for_everyone()
        return load_from_disk(str(folder))
