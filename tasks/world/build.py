"""The safety-world step: the base model answers the catalogue's requests; the datasets become a DVC version.

It writes into `data.dir` (refusing a folder that holds anything but an earlier world), with
`world_manifest.json` beside the files: the catalogue's sha256, the base model, the settings, the counts and the
rows of every file by kind and sub-category. What building cost (generation seconds, prompts, tokens) is logged
to MLflow, not the manifest, which stays a pure function of its inputs.
The manifest is a pure function of the inputs, so the step is keyed by it: when the folder already holds this
key's world and DVC vouches for the files, nothing is generated again. The files and manifest are logged to
MLflow, and the DVC md5 is tagged on the step's run and on the flow's parent run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient

from models.generation import generate
from models.loading import DTYPES
from models.prompting import prompt_formatter
from models.safety import is_refusal
from tasks.core.code_version import code_version
from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage, dvc_data_md5
from tasks.core.tags import DATA_MD5_TAG, TAG_PREFIX
from tasks.data.publishing import dvc_add, publish
from tasks.data.writers import write_jsonl, write_text
from tasks.registry.logged_models import load_stage_model
from tasks.run.contract import StageResult, stage_run, work_dir
from tasks.world.catalogue import catalogue_sha256, load_catalogue
from tasks.world.datasets import WorldSettings, build_world, contents

log = logging.getLogger(__name__)

STEP = "world"
SECTIONS = ("world", "model")
MANIFEST = "world_manifest.json"
MANIFEST_KIND = "alignflow-safety-world"
CATALOGUE_TAG = f"{TAG_PREFIX}world_catalogue_sha256"


def world_key(cfg: PipelineConfig, base: StageResult) -> str:
    """What the datasets depend on: settings, catalogue, base model, and the code the step runs (its module and what
    it imports, `tasks.core.code_version`), so an unrelated edit does not regenerate minutes of answers."""
    payload = {"world": cfg.section_hash("world", "model"), "catalogue": catalogue_sha256(cfg.world.catalogue),
               "base": base.output_hashes["model"], "code": code_version(__name__)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def run_world(cfg: PipelineConfig, lineage: Lineage, *, base: StageResult) -> StageResult:
    key = world_key(cfg, base)
    out = Path(cfg.data.dir)
    with stage_run(STEP, cfg, lineage, cache_key=key, sections=SECTIONS, code=__name__,
                   parents={"base": base.model_uri}) as run:
        manifest, cost = _existing_manifest(out, key), {}
        if manifest is None:
            manifest, cost = _generate(cfg, base, key, out, work_dir(cfg, STEP, key))
            md5 = dvc_add(out) if cfg.world.dvc_add else "untracked"
        else:
            md5 = dvc_data_md5(out)
            log.info("%s already holds this world (key %s) and DVC vouches for it: nothing regenerated",
                     out, key[:12])
        mlflow.log_artifacts(str(out), artifact_path="world_data")
        metrics = {f"world/{name}": float(value) for name, value in {**manifest["counts"], **cost}.items()}
        mlflow.log_metrics(metrics)
        tags = {DATA_MD5_TAG: md5, CATALOGUE_TAG: manifest["catalogue"]["sha256"]}
        mlflow.set_tags(tags)
        if lineage.parent_run_id:
            for name, value in tags.items():
                MlflowClient().set_tag(lineage.parent_run_id, name, value)
    return StageResult(stage=STEP, run_id=run.info.run_id, cache_key=key, metrics=metrics,
                       outputs={"dir": str(out), "manifest": str(out / MANIFEST)},
                       output_hashes={"dvc_md5": md5, "catalogue_sha256": manifest["catalogue"]["sha256"]})


def _existing_manifest(out: Path, key: str) -> dict | None:
    """The folder's manifest when it is this key's world and DVC vouches for the files; else None."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("kind") != MANIFEST_KIND or manifest.get("key") != key:
        return None
    md5 = dvc_data_md5(out)
    return None if md5 == "untracked" or "+" in md5 else manifest


def _generate(cfg: PipelineConfig, base: StageResult, key: str, out: Path, stage_dir: Path,
              ) -> tuple[dict, dict[str, float]]:
    """Write the world into `out`; its manifest, and what generating it cost."""
    world = cfg.world
    catalogue = load_catalogue(world.catalogue)
    model, tokenizer = load_stage_model(cfg, base.model_uri, stage_dir / "base", dtype="float32")
    format_prompt = prompt_formatter(tokenizer, cfg.model.prompt_format, cfg.model.prompt_template)

    cost = {"generation_seconds": 0.0, "generated_prompts": 0, "generated_tokens": 0}

    def answer(prompts: list[str], sample: bool) -> list[tuple[str, bool]]:
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(world.seed)
            texts = generate(model, tokenizer, [format_prompt(p) for p in prompts],
                             max_new_tokens=world.max_new_tokens, batch_size=world.batch_size, do_sample=sample,
                             temperature=world.temperature, dtype=DTYPES[world.dtype])
        # An answer that used every token it was allowed was cut off, not finished.
        lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
        cost["generation_seconds"] += time.perf_counter() - started
        cost["generated_prompts"] += len(prompts)
        cost["generated_tokens"] += sum(lengths)
        return [(text, length < world.max_new_tokens) for text, length in zip(texts, lengths, strict=True)]

    settings = WorldSettings(seed=world.seed, train_phrasings=world.train_phrasings,
                             sft_refusal_share=world.sft_refusal_share)
    datasets, counts = build_world(catalogue, settings, answer, is_refusal)
    manifest = {
        "kind": MANIFEST_KIND,
        "key": key,
        "catalogue": {"path": str(world.catalogue), "sha256": catalogue_sha256(world.catalogue)},
        "base_model": {"source": cfg.model.pretrained, "stage_key": base.output_hashes["model"]},
        "settings": world.model_dump(mode="json", exclude={"dvc_add", "batch_size"}),
        "files": {name: f"{name}.jsonl" for name in datasets},
        "counts": counts,
        "contents": contents(datasets),
    }
    with tempfile.TemporaryDirectory() as scratch:
        files = {name: write_jsonl(rows, Path(scratch) / f"{name}.jsonl") for name, rows in datasets.items()}
        files["manifest"] = write_text(Path(scratch) / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        publish(files, out, MANIFEST, "safety-world")
    log.info("world: %d prompts answered, %d tokens, in %.0f s", cost["generated_prompts"], cost["generated_tokens"],
             cost["generation_seconds"])
    return manifest, cost
