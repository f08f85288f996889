"""Every pipeline stage by name: its plain function and its cache-key function.

The Prefect tasks (`tasks.orchestration`), the stage flow a worker runs (`flows.stage_flow`) and the
`accelerate launch` entry point (`flows.stage_entry`) all look stages up here, so a stage runs the same code
wherever it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from tasks.base_model import base_model_key, run_base_model
from tasks.dpo import dpo_key, run_dpo
from tasks.evaluate import evaluate_key, run_evaluate
from tasks.ppo import ppo_key, run_ppo
from tasks.promote import promote_key, run_promote
from tasks.register import register_key, run_register
from tasks.reward import reward_key, run_reward
from tasks.sft import run_sft, sft_key
from tasks.validate import run_validate, validate_key


class Stage(NamedTuple):
    run: Callable
    key: Callable


STAGES: dict[str, Stage] = {
    "base_model": Stage(run_base_model, base_model_key),
    "validate": Stage(run_validate, validate_key),
    "sft": Stage(run_sft, sft_key),
    "reward": Stage(run_reward, reward_key),
    "dpo": Stage(run_dpo, dpo_key),
    "ppo": Stage(run_ppo, ppo_key),
    "evaluate": Stage(run_evaluate, evaluate_key),
    "register": Stage(run_register, register_key),
    "promote": Stage(run_promote, promote_key),
}

# Stages that may run on another worker: they read their inputs from MLflow URIs and write only to MLflow.
DISPATCHABLE = ("sft", "reward", "dpo", "ppo", "evaluate")
