"""Labels back in: a labelling tool's export becomes preference pairs in a new DVC data version.

The new version is a whole data folder: the pipeline's datasets as they are, with `preferences_train` holding
the labelled pairs (after the existing ones with `append`, alone with `replace`) and a manifest saying where
they came from. The new pairs pass the preference suite (with the eval files, so a labelled prompt that leaks
into the held-out eval is caught) before anything is written; a bad export leaves no folder behind.
Train on it with `--set data.dir=<folder>`: its DVC md5 is then the lineage's data version.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tasks.core.config import PipelineConfig
from tasks.core.errors import DataValidationError
from tasks.core.hashing import md5_file
from tasks.data.expectations import DATASET_KINDS, EVAL_FILES, validate_files
from tasks.data.publishing import dvc_add, publish
from tasks.data.readers import read_records
from tasks.data.writers import write_jsonl, write_text
from tasks.feedback.formats import Format, detect_format, read_export
from tasks.feedback.records import read_pairs
from tasks.feedback.votes import Tally, preference_rows

FEEDBACK_MANIFEST = "feedback_manifest.json"
FEEDBACK_KIND = "alignflow-feedback-dataset"


@dataclass(frozen=True)
class Imported:
    folder: Path
    dvc_md5: str
    tally: Tally
    format: str
    preference_rows: int


def import_feedback(cfg: PipelineConfig, export_file: Path, pairs_file: Path, out_dir: Path, *,
                    kind: Format | None = None, mode: Literal["append", "replace"] = "append",
                    dvc: bool = True, source: dict | None = None) -> Imported:
    """Read the export, vote, validate, then publish `out_dir` as a data version (`dvc add` unless `dvc=False`)."""
    kind = kind or detect_format(export_file)
    pairs = read_pairs(pairs_file)
    rows, tally = preference_rows(pairs, read_export(export_file, pairs, kind))
    if not rows:
        raise DataValidationError(f"{export_file}: no preference pair came out of {tally.labels} labels on "
                                  f"{tally.pairs} pairs ({tally.ties} ties, {tally.skips} skips, "
                                  f"{tally.disagreements} disagreements, {tally.unlabelled} unlabelled)")
    existing = [record for _, record in read_records(cfg.data.path("preferences_train"))] if mode == "append" else []
    with tempfile.TemporaryDirectory(prefix="alignflow-feedback-") as staging:
        staged = write_jsonl([*existing, *rows], Path(staging) / cfg.data.preferences_train)
        _validate(cfg, staged, cfg.work_dir / "feedback-import" / Path(out_dir).name)
        files = {name: cfg.data.path(name) for name in DATASET_KINDS if cfg.data.path(name).is_file()}
        files["preferences_train"] = staged
        folder = publish(files, out_dir, FEEDBACK_MANIFEST, "feedback")
    manifest = {
        "kind": FEEDBACK_KIND,
        "export": {"path": str(export_file), "md5": md5_file(export_file), "format": kind},
        "pairs": {"path": str(pairs_file), "md5": md5_file(pairs_file)},
        "base_data": str(cfg.data.dir),
        "mode": mode,
        "existing_pairs": len(existing),
        "tally": tally.metrics(),
        **(source or {}),
    }
    write_text(folder / FEEDBACK_MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    md5 = dvc_add(folder) if dvc else "untracked"
    return Imported(folder=folder, dvc_md5=md5, tally=tally, format=kind, preference_rows=len(existing) + len(rows))


def _validate(cfg: PipelineConfig, preferences: Path, report_dir: Path) -> None:
    """The preference suite on the pairs (each failing example shows its pair_id), with the eval files for the
    leakage check. No tokenizer here: the pipeline's validate stage checks token lengths with the model's."""
    files = {"preferences_train": preferences,
             **{name: cfg.data.path(name) for name in EVAL_FILES if cfg.data.path(name).is_file()}}
    validate_files(files, tokenizer=None, format_prompt=str, max_length=cfg.validation.max_length,
                   on_failure="fail", max_quarantine_fraction=0.0, out_dir=report_dir)


def log_import(imported: Imported, *, tags: dict | None = None, nested: bool = False) -> str:
    """An MLflow run for the import: its counts as metrics, the manifest, and the data version's md5 as a tag."""
    import mlflow

    from tasks.core.tags import DATA_MD5_TAG, STAGE_TAG
    from tasks.run.lifecycle import tracked_run

    with tracked_run(run_name="feedback-import", nested=nested,
                     tags={STAGE_TAG: "feedback-import", DATA_MD5_TAG: imported.dvc_md5, **(tags or {})}) as run:
        mlflow.log_metrics({f"feedback/{name}": value for name, value in imported.tally.metrics().items()})
        mlflow.log_param("feedback.format", imported.format)
        mlflow.log_param("feedback.data_dir", str(imported.folder))
        mlflow.log_artifact(str(imported.folder / FEEDBACK_MANIFEST), artifact_path="feedback_import")
    return run.info.run_id
