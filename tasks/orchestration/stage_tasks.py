"""The thin Prefect layer over the stage functions: retries for transient faults only, caching on the stage key.

Each stage's task calls its plain `run_*` function unchanged. Its Prefect cache key is the stage's own cache
key, so a task whose inputs did not change returns its earlier `StageResult` (state "Cached") without running.
A stage the config sends to a work pool runs through its dispatched twin instead: same name, same cache key,
but its body runs the stage as a deployment on that pool's worker (`tasks.orchestration.dispatch`).
The data-making steps (CAI, the safety world) are tasks too, without Prefect's cache: CAI's progress files make a
rerun resume, and the world step reuses a folder that already holds its key's data.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import mlflow
from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.cai.rlaif import run_rlaif
from tasks.cai.supervised import run_critique_revise, run_respond, run_sl_datasets
from tasks.cai.versioning import run_version
from tasks.core.config import PipelineConfig
from tasks.core.lineage import Lineage
from tasks.core.stage_names import DISPATCHABLE
from tasks.core.tags import CACHE_TAG_PREFIX
from tasks.orchestration.dispatch import dispatch_stage
from tasks.orchestration.stage_table import STAGES
from tasks.orchestration.transient import retry_if_transient
from tasks.run.contract import StageResult
from tasks.world.build import run_world

_NOT_KEY_INPUTS = ("cfg", "lineage")


def _stage_task(run: Callable, key: Callable, name: str, run_name: str) -> Task:
    def cache_key(context, parameters) -> str:
        inputs = {k: v for k, v in parameters.items() if k not in _NOT_KEY_INPUTS}
        return f"{name}-{key(parameters['cfg'], **inputs)}"

    return task(
        run,
        name=name,
        task_run_name=run_name,
        retries=2,
        retry_delay_seconds=5,
        retry_condition_fn=retry_if_transient,
        cache_key_fn=cache_key,
        persist_result=True,
        result_serializer="json",
    )


def _dispatching(name: str, run: Callable) -> Callable:
    """A stand-in for `run` with its signature (so the cache key sees the same inputs) that dispatches instead."""

    @functools.wraps(run)
    def dispatched(cfg, lineage, **inputs):
        return dispatch_stage(name, cfg, lineage, inputs)

    return dispatched


def _data_task(run: Callable, name: str) -> Task:
    """No Prefect cache and no Prefect retries: the steps find their own earlier work (progress files, a
    folder holding this key's data), and the HTTP backend retries by itself (retrying the task on top would
    multiply the waits)."""
    return task(run, name=name, task_run_name=name, cache_policy=NO_CACHE)


TASKS: dict[str, Task] = {name: _stage_task(stage.run, stage.key, name, stage.run_name)
                          for name, stage in STAGES.items()}
_DISPATCHED: dict[str, Task] = {
    name: _stage_task(_dispatching(name, STAGES[name].run), STAGES[name].key, name, STAGES[name].run_name)
    for name in DISPATCHABLE
}
CAI_TASKS: dict[str, Task] = {
    "respond": _data_task(run_respond, "cai-respond"),
    "critique_revise": _data_task(run_critique_revise, "cai-critique_revise"),
    "sl_datasets": _data_task(run_sl_datasets, "cai-sl_datasets"),
    "rlaif": _data_task(run_rlaif, "cai-rlaif"),
    "version": _data_task(run_version, "cai-version"),
}
WORLD_TASK: Task = _data_task(run_world, "world")


def placed(stage_task: Task, cfg: PipelineConfig) -> Task:
    """The task that runs this stage where the config says: here, or on its work pool's worker."""
    return _DISPATCHED[stage_task.name] if stage_task.name in cfg.dispatch.pools else stage_task


def run_stage(step: str | Task, cfg: PipelineConfig, lineage: Lineage, **inputs) -> StageResult:
    """Run a pipeline stage (by name) or a CAI step (its task), here or on its work pool; when Prefect serves it
    from cache, say so in the log and on the parent run. Its metrics go on the parent run too."""
    if isinstance(step, str):
        if step not in TASKS:
            raise ValueError(f"unknown stage {step!r}; expected one of {', '.join(TASKS)}")
        step = TASKS[step]
    step = placed(step, cfg)
    state = step(cfg, lineage, **inputs, return_state=True)
    result: StageResult = state.result()
    if state.name == "Cached" and not _run_exists(result.run_id):
        # The cache points at a run this tracking store no longer has: recompute rather than hand on a ghost.
        state = step.with_options(refresh_cache=True)(cfg, lineage, **inputs, return_state=True)
        result = state.result()
    reused = state.name == "Cached"
    if reused:
        get_run_logger().info("Stage %s: inputs unchanged, reusing the cached result of run %s", result.stage,
                              result.run_id)
    mlflow.set_tag(f"{CACHE_TAG_PREFIX}{result.stage}", f"reused:{result.run_id}" if reused else "computed")
    mlflow.log_metrics(_parent_metrics(result))
    return result


def _parent_metrics(result: StageResult) -> dict[str, float]:
    """Stage metrics on the parent run; eval metrics get the model's label so candidates sit side by side."""
    if not result.stage.startswith("evaluate-"):
        return result.metrics
    label = result.stage.removeprefix("evaluate-")
    return {f"{label}/{name.removeprefix('eval/')}": value for name, value in result.metrics.items()}


def _run_exists(run_id: str) -> bool:
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True
