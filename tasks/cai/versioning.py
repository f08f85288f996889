"""Publishing CAI outputs as a new dataset version: one folder, a manifest, `dvc add`, MLflow artifacts.

The folder holds the datasets and `cai_manifest.json`: the constitution's sha256, the models, seed, rounds,
template hashes and counts. The manifest is a pure function of the inputs and outputs (no run ids, no
times), so an identical rerun gives the identical DVC md5. A model trained on any file of the folder finds
the manifest next to it; `manifest_tags` turns it into the lineage tags its runs carry.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import mlflow
import yaml
from mlflow import MlflowClient

from tasks.cai.config import CAIConfig
from tasks.cai.steps import CONSTITUTION_TAG, Inputs, ModelSources, step_key, step_run
from tasks.core.config import PipelineConfig
from tasks.core.errors import AlignflowError
from tasks.core.hashing import md5_file
from tasks.core.lineage import Lineage, dvc_data_md5
from tasks.core.tags import TAG_PREFIX
from tasks.run.contract import StageResult

MANIFEST = "cai_manifest.json"
MANIFEST_KIND = "alignflow-cai-dataset"
CAI_MD5_TAG = f"{TAG_PREFIX}cai_dvc_md5"
_LABEL_QUALITY = ("rlaif/agreement_rate", "rlaif/mean_agreement", "rlaif/first_position_prob")


class OutputFolderError(AlignflowError):
    """The output folder cannot be (re)written or versioned."""


def run_version(cfg: PipelineConfig, lineage: Lineage, *, cai: CAIConfig, models: ModelSources,
                datasets: list[StageResult]) -> StageResult:
    inputs = Inputs(cai, cfg)
    files = {name: Path(path) for result in datasets for name, path in result.outputs.items()}
    metrics = {name: value for result in datasets for name, value in result.metrics.items()}
    key = step_key("version", files={name: md5_file(path) for name, path in files.items()})
    with step_run("version", cai, cfg, lineage, key=key, sections=("output_dir", "dvc_add"), inputs=inputs) as run:
        out = publish(files, cai.output_dir)
        manifest = build_manifest(cai, inputs, models, out, {name: path.name for name, path in files.items()},
                                  metrics)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        md5 = dvc_add(out) if cai.dvc_add else "untracked"
        mlflow.log_artifacts(str(out), artifact_path="cai_data")
        rows = {f"cai_data/{name}_rows": float(count) for name, count in manifest["rows"].items()}
        mlflow.log_metrics(rows)
        tags = {CAI_MD5_TAG: md5, CONSTITUTION_TAG: inputs.constitution_sha256}
        mlflow.set_tags(tags)
        if lineage.parent_run_id:
            for name, value in tags.items():
                MlflowClient().set_tag(lineage.parent_run_id, name, value)
    return StageResult(stage="cai-version", run_id=run.info.run_id, cache_key=key, metrics=rows,
                       outputs={"dir": str(out), "manifest": str(out / MANIFEST),
                                **{name: str(out / path.name) for name, path in files.items()}},
                       output_hashes={"dvc_md5": md5, "constitution_sha256": inputs.constitution_sha256})


def publish(files: dict[str, Path], output_dir: Path) -> Path:
    """Replace the folder's contents with `files`; refuse a folder that holds anything but a CAI output."""
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / MANIFEST).is_file():
        raise OutputFolderError(f"output_dir {output_dir} exists and is not a CAI output folder (no {MANIFEST}); "
                                "choose an empty or new folder")
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    for path in files.values():
        shutil.copyfile(path, output_dir / path.name)
    return output_dir


def build_manifest(cai: CAIConfig, inputs: Inputs, models: ModelSources, out: Path, files: dict[str, str],
                   metrics: dict[str, float]) -> dict:
    return {
        "kind": MANIFEST_KIND,
        "constitution": {"path": str(cai.constitution), "name": inputs.constitution.name,
                         "sha256": inputs.constitution_sha256,
                         "principles": [p.name for p in inputs.constitution.principles]},
        "prompts": {"path": str(inputs.prompts_path), "md5": md5_file(inputs.prompts_path),
                    "count": len(inputs.prompts)},
        "models": {"policy": models.policy_uri or models.policy_id, "policy_id": models.policy_id,
                   "feedback": models.feedback_uri or models.feedback_id, "feedback_id": models.feedback_id},
        "seed": cai.seed,
        "rounds": cai.critique.rounds,
        "templates": {name: template.sha256 for name, template in inputs.templates.items()},
        "settings_sha256": cai.section_hash("respond", "critique", "rlaif", "stop", "completion_prefix"),
        "files": files,
        "rows": {name: len((out / filename).read_text(encoding="utf-8").splitlines()) for name, filename in files.items()},
        # Quality of the AI labels; run counters (how much was resumed) stay in MLflow, so a rerun is byte-equal.
        "rlaif": {name.removeprefix("rlaif/"): value for name, value in metrics.items() if name in _LABEL_QUALITY},
    }


def dvc_add(folder: Path) -> str:
    """`dvc add` the folder in the DVC repository that contains it; returns the md5 DVC recorded."""
    # Imported here: DVC is slow to import and only this step needs it.
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    folder = Path(folder).resolve()
    try:
        root = Repo.find_root(str(folder))
        with Repo(root) as repo:
            repo.add(str(folder))
    except NotDvcRepoError:
        raise OutputFolderError(f"output_dir {folder} is not inside a DVC repository: run `dvc init` there, or "
                                "set dvc_add: false") from None
    except DvcException as err:
        raise OutputFolderError(f"dvc add {folder} failed: {err}") from None
    dvc_file = folder.with_name(folder.name + ".dvc")
    return str(yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"])


def manifest_tags(training_files: Iterable[Path]) -> dict[str, str]:
    """Lineage tags for training files generated by a CAI run: the constitution hash and the folder's DVC md5.

    Empty when no file has a manifest next to it; several CAI folders give comma-joined values.
    """
    constitutions, md5s = set(), set()
    for file in training_files:
        manifest = Path(file).parent / MANIFEST
        if not manifest.is_file():
            continue
        content = json.loads(manifest.read_text(encoding="utf-8"))
        if content.get("kind") != MANIFEST_KIND:
            continue
        constitutions.add(content["constitution"]["sha256"])
        md5s.add(dvc_data_md5(manifest.parent))
    if not constitutions:
        return {}
    return {CONSTITUTION_TAG: ",".join(sorted(constitutions)), CAI_MD5_TAG: ",".join(sorted(md5s))}
