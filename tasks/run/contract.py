"""The contract every stage keeps: what identifies its inputs, the MLflow child run it logs to, what it returns.

A stage is a plain function `run_<stage>(cfg, ...) -> StageResult`. Its *cache key* hashes everything that
can change its output: the config sections it reads, the hashes of its data, the keys of the stages whose
models it starts from, and the version of the code it runs (`tasks.core.code_version`: its module and what that
imports, so an edit elsewhere keeps the cache). The same key names its work folder (checkpoints resume there)
and is the Prefect cache key, so unchanged inputs are never recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import mlflow
from pydantic import BaseModel, ConfigDict

from models.timing import GENERATE, LOAD, TRAIN, taken
from tasks.core.code_version import code_version
from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.core.locks import file_lock
from tasks.core.secrets import redact_mapping, strip_credentials
from tasks.core.tags import CACHE_KEY_TAG, CODE_VERSION_TAG, PARENT_TAG_PREFIX, STAGE_TAG
from tasks.run.lifecycle import tracked_run
from tasks.run.ranks import is_main_process

log = logging.getLogger(__name__)


class StageResult(BaseModel):
    """What a stage hands on: small, JSON-serialisable, and enough for the next stage to run on another worker.

    `outputs` names the files a stage produced (validated datasets, reports); `output_hashes` identifies them
    for the stages downstream (a model stage's output hash is its own cache key).
    """

    model_config = ConfigDict(frozen=True)

    stage: str
    run_id: str
    cache_key: str
    model_uri: str | None = None
    metrics: dict[str, float] = {}
    outputs: dict[str, str] = {}
    output_hashes: dict[str, str] = {}
    input_hashes: dict[str, str] = {}


def stage_key(stage: str, cfg: PipelineConfig, sections: tuple[str, ...], input_hashes: Mapping[str, str], *,
              code: str) -> str:
    """The stage's cache key: config sections it reads + input hashes + the version of `code`, the stage's module."""
    payload = {
        "stage": stage,
        "config": cfg.section_hash(*sections),
        "inputs": dict(sorted(input_hashes.items())),
        "code": code_version(code),
        "tracking_uri": strip_credentials(mlflow.get_tracking_uri()),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def work_dir(cfg: PipelineConfig, stage: str, key: str) -> Path:
    """The stage's own folder, keyed by its inputs: a rerun with the same inputs finds its checkpoints."""
    path = cfg.work_dir / stage / key[:16]
    path.mkdir(parents=True, exist_ok=True)
    return path


def work_dir_lock(stage_dir: Path):
    """An exclusive lock on a stage's work folder, across processes; the OS drops it if the holder dies."""
    return file_lock(stage_dir / ".lock", "another run is computing this stage with the same inputs")


@contextmanager
def stage_run(
    stage: str,
    cfg: PipelineConfig,
    lineage: Lineage,
    *,
    cache_key: str,
    sections: tuple[str, ...],
    code: str,
    parents: Mapping[str, str] | None = None,
) -> Iterator[mlflow.ActiveRun | None]:
    """An MLflow run for one stage, nested under the pipeline run, carrying the full lineage as tags.

    `code` is the stage's module, whose code version (`tasks.core.code_version`) is tagged beside the cache key.
    Held under the stage's work-folder lock, so two runs with the same inputs never write the same checkpoints.

    Under a multi-process launch only the main process does this (`tasks.run.ranks`). Every other process gets
    None: it trains with the main one (which holds the lock for them all), and then returns `follower_result`
    without saving, logging or tracking anything.
    """
    if not is_main_process():
        yield None
        return
    tags = {
        **lineage.tags(),
        STAGE_TAG: stage,
        CACHE_KEY_TAG: cache_key,
        CODE_VERSION_TAG: code_version(code),
    }
    for name, uri in (parents or {}).items():
        tags[f"{PARENT_TAG_PREFIX}{name}"] = uri
    with work_dir_lock(work_dir(cfg, stage, cache_key)), \
            tracked_run(run_name=stage, nested=True, parent_run_id=lineage.parent_run_id,
                        tags=redact_mapping(tags)) as run:
        params = cfg.flat_params()
        mlflow.log_params({k: v for k, v in params.items() if k.split(".", 1)[0] in sections})
        taken()  # what ran before the stage is not its time
        started = time.perf_counter()
        yield run
        mlflow.log_metrics(profile_metrics(taken(), time.perf_counter() - started))


def profile_metrics(phases: dict[str, float], wall: float) -> dict[str, float]:
    """`profile/<phase>_seconds` for generating, training and loading models, the rest of the stage's wall time
    as `profile/other_seconds` (data, scoring, saving, tracking), and the wall time itself."""
    spent = {name: phases.get(name, 0.0) for name in (GENERATE, TRAIN, LOAD)}
    other = max(wall - sum(spent.values()), 0.0)
    return {**{f"profile/{name}_seconds": seconds for name, seconds in spent.items()},
            "profile/other_seconds": other, "profile/wall_seconds": wall}


def follower_result(stage: str, cache_key: str) -> StageResult:
    """What a process other than the main one returns once it has trained: no run, model or metrics of its own
    (the main process's result is the stage's)."""
    return StageResult(stage=stage, run_id="", cache_key=cache_key)
