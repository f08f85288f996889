"""The thin Prefect layer over the stage functions: retries for transient errors, caching on the stage key.

Each `*_task` calls the plain `run_*` function unchanged. Its Prefect cache key is the stage's own cache key,
so a task whose inputs did not change returns its earlier `StageResult` (state "Cached") without running.
A stage the config sends to a work pool runs through its dispatched twin instead: same name, same cache key,
but its body runs the stage as a deployment on that pool's worker (`tasks.dispatch`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prefect import Task, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists

from flows.config import PipelineConfig
from flows.errors import AlignflowError
from tasks.dispatch import dispatch_stage
from tasks.stages import DISPATCHABLE, STAGES

_NOT_KEY_INPUTS = ("cfg", "lineage")


def _retry_if_transient(task, task_run, state) -> bool:
    """Retry crashes and infrastructure errors, never bad input: that would fail the same way again."""
    try:
        state.result()
    except AlignflowError:
        return False
    except Exception:  # noqa: BLE001 - any other failure is worth another try
        return True
    return True


def stage_task(run: Callable, key: Callable, name: str, run_name: str | None = None) -> Task:
    def cache_key(context, parameters) -> str:
        inputs = {k: v for k, v in parameters.items() if k not in _NOT_KEY_INPUTS}
        return f"{name}-{key(parameters['cfg'], **inputs)}"

    return task(
        run,
        name=name,
        task_run_name=run_name or name,
        retries=2,
        retry_delay_seconds=5,
        retry_condition_fn=_retry_if_transient,
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


def _run_name(name: str) -> str:
    return "evaluate-{label}" if name == "evaluate" else name


_TASKS = {name: stage_task(stage.run, stage.key, name, _run_name(name)) for name, stage in STAGES.items()}
_DISPATCHED = {name: stage_task(_dispatching(name, STAGES[name].run), STAGES[name].key, name, _run_name(name))
               for name in DISPATCHABLE}

base_model_task = _TASKS["base_model"]
validate_task = _TASKS["validate"]
sft_task = _TASKS["sft"]
reward_task = _TASKS["reward"]
dpo_task = _TASKS["dpo"]
ppo_task = _TASKS["ppo"]
evaluate_task = _TASKS["evaluate"]
register_task = _TASKS["register"]
promote_task = _TASKS["promote"]


def placed(stage_task: Task, cfg: PipelineConfig) -> Task:
    """The task that runs this stage where the config says: here, or on its work pool's worker."""
    return _DISPATCHED[stage_task.name] if stage_task.name in cfg.dispatch.pools else stage_task


@contextmanager
def promotion_lock(cfg: PipelineConfig) -> Iterator[None]:
    """One gate decision at a time per registered policy, across every pipeline run on this Prefect server.

    A Prefect global concurrency limit of one slot: its lease expires if a holder dies, so a crashed run
    cannot wedge the registry.
    """
    name = f"alignflow-promote-{cfg.registry.policy_name}"
    with get_client(sync_client=True) as client:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            pass
    with concurrency(name, occupy=1, strict=True):
        yield
