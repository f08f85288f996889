"""The thin Prefect layer over the stage functions: retries for transient errors, caching on the stage key.

Each `*_task` calls the plain `run_*` function unchanged. Its Prefect cache key is the stage's own cache key,
so a task whose inputs did not change returns its earlier `StageResult` (state "Cached") without running.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import Task, task

from flows.errors import AlignflowError
from tasks.base_model import base_model_key, run_base_model
from tasks.dpo import dpo_key, run_dpo
from tasks.evaluate import evaluate_key, run_evaluate
from tasks.ppo import ppo_key, run_ppo
from tasks.promote import promote_key, run_promote
from tasks.register import register_key, run_register
from tasks.reward import reward_key, run_reward
from tasks.sft import run_sft, sft_key
from tasks.validate import run_validate, validate_key

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


base_model_task = stage_task(run_base_model, base_model_key, "base_model")
validate_task = stage_task(run_validate, validate_key, "validate")
sft_task = stage_task(run_sft, sft_key, "sft")
reward_task = stage_task(run_reward, reward_key, "reward")
dpo_task = stage_task(run_dpo, dpo_key, "dpo")
evaluate_task = stage_task(run_evaluate, evaluate_key, "evaluate", run_name="evaluate-{label}")
register_task = stage_task(run_register, register_key, "register")
ppo_task = stage_task(run_ppo, ppo_key, "ppo")
promote_task = stage_task(run_promote, promote_key, "promote")
