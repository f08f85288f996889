"""Every pipeline stage by name: its plain function, its cache-key function and its run name.

The names come from `tasks.core.stage_names`; stage `<name>` is module `tasks.<name>` with `run_<name>` and
`<name>_key` (and optionally `RUN_NAME`, a template over its keyword inputs). The Prefect tasks, the stage
flow a worker runs and the `accelerate launch` entry point all look stages up here, so a stage runs the same
code wherever it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import NamedTuple

from tasks.core import stage_names


class Stage(NamedTuple):
    run: Callable
    key: Callable
    run_name: str  # Prefect task-run name, e.g. "evaluate-{label}"


def _stage(name: str) -> Stage:
    module = importlib.import_module(f"tasks.{name}")
    return Stage(getattr(module, f"run_{name}"), getattr(module, f"{name}_key"), getattr(module, "RUN_NAME", name))


STAGES: dict[str, Stage] = {name: _stage(name) for name in stage_names.STAGES}
